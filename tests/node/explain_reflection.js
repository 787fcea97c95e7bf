// Explain knowing nothing but what the server's reflection (grpc.reflection.v1) serves:
// node explain_reflection.js ADDRESS IMAGE METHOD
'use strict';

const fs = require('fs');
const lib = require('./lib');

lib.run(async () => {
  const [address, image, method] = process.argv.slice(2);
  const listed = await lib.reflect(address, 'v1', { list_services: '' });
  const services = listed.list_services_response.service.map((s) => s.name);
  const files = await lib.filesForSymbol(address, 'v1', 'deepvis.v1.Explainer');
  const deepvis = files.find((f) => f.name === 'deepvis/v1/deepvis.proto');
  const set = lib.descriptor.FileDescriptorSet.encode({ file: files }).finish();
  const definition = lib.protoLoader.loadFileDescriptorSetFromBuffer(set, lib.LOADER_OPTIONS);
  const pkg = lib.grpc.loadPackageDefinition(definition);
  const client = new pkg.deepvis.v1.Explainer(address, lib.grpc.credentials.createInsecure());
  const request = { model: 'digits', method, input: { image: fs.readFileSync(image) } };
  const { error, response } = await lib.unary(client, 'Explain', request);
  client.close();
  if (error) throw error;
  return {
    services,
    files: files.map((f) => f.name),
    comment: lib.leadingComment(deepvis, 'ExplainRequest', 'model'),
    ...lib.summary(response),
  };
});
