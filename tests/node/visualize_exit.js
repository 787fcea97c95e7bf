// A Node client that goes away mid-stream: starts a Visualize job with a picture every step
// and exits the process (no cancel, no goodbye) after a given number of messages.
// Usage: node visualize_exit.js ADDRESS MESSAGES
'use strict';

const { explainerFromProto } = require('./lib');

const [address, messages] = process.argv.slice(2);
const client = explainerFromProto(address);
const call = client.Visualize({
  model: 'digits',
  objective: { class_index: 3 },
  steps: 2000,
  progress_every: 1,
  batch: 4,
});
let seen = 0;
call.on('data', () => {
  seen += 1;
  if (seen >= Number(messages)) process.exit(0);
});
call.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});
