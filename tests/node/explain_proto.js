// Explain with the .proto: node explain_proto.js ADDRESS IMAGE METHOD [TARGET_CLASS]
// METHOD is an enum name as a Node client writes it, e.g. METHOD_GUIDED_BACKPROP or GRAD_CAM.
'use strict';

const fs = require('fs');
const lib = require('./lib');

lib.run(async () => {
  const [address, image, method, target] = process.argv.slice(2);
  const client = lib.explainerFromProto(address);
  const request = { model: 'digits', method, input: { image: fs.readFileSync(image) } };
  if (target !== undefined) request.target = { class_index: target };
  const { error, response } = await lib.unary(client, 'Explain', request);
  client.close();
  if (error) throw error;
  return lib.summary(response);
});
