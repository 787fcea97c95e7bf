// A refused Explain and what its grpc-status-details-bin trailer decodes to:
// node error_details.js ADDRESS IMAGE CASE, CASE one of target, pixels, method.
'use strict';

const fs = require('fs');
const lib = require('./lib');

lib.run(async () => {
  const [address, image, which] = process.argv.slice(2);
  const cases = {
    // A class beyond the digits model's 10.
    target: { method: 'METHOD_GUIDED_BACKPROP', input: { image: fs.readFileSync(image) }, target: { class_index: '10' } },
    // Raw pixels whose bytes do not fill the shape.
    pixels: { method: 'GUIDED_BACKPROP', input: { pixels: { dtype: 'DTYPE_UINT8', shape: ['32', '32'], data: Buffer.alloc(10) } } },
    // No method at all.
    method: { input: { image: fs.readFileSync(image) } },
  };
  const client = lib.explainerFromProto(address);
  const { error, response } = await lib.unary(client, 'Explain', { model: 'digits', ...cases[which] });
  client.close();
  if (!error) throw new Error(`expected a refusal, got ${JSON.stringify(lib.summary(response))}`);
  return { code: error.code, details: error.details, status: lib.statusDetails(error) };
});
