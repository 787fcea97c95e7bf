// Helpers the Node clients share: gRPC channels, float32 decoding, server reflection over
// grpc.reflection.v1, and google.rpc.Status decoding of grpc-status-details-bin.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const descriptor = require('protobufjs/ext/descriptor');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');

// How the clients read messages: field names as in the .proto, enums by name, int64 as
// strings (JSON-safe), bytes as Buffers.
const LOADER_OPTIONS = { keepCase: true, enums: String, longs: String, defaults: false, oneofs: true };

// An Explainer client from deepvis.proto, the way a Node team with the contract file works.
function explainerFromProto(address) {
  const definition = protoLoader.loadSync('deepvis/v1/deepvis.proto', {
    ...LOADER_OPTIONS,
    includeDirs: [PROTOS],
  });
  const pkg = grpc.loadPackageDefinition(definition);
  return new pkg.deepvis.v1.Explainer(address, grpc.credentials.createInsecure());
}

// The float32 little-endian elements of a Tensor message, as numbers.
function float32s(tensor) {
  if (tensor.dtype !== 'DTYPE_FLOAT32') throw new Error(`not float32: ${tensor.dtype}`);
  const data = tensor.data;
  const count = tensor.shape.reduce((n, d) => n * Number(d), 1);
  if (data.length !== 4 * count) throw new Error(`${data.length} bytes for ${count} elements`);
  const values = new Array(count);
  // readFloatLE: the wire is little-endian whatever this machine is, and a Buffer's offset
  // into its ArrayBuffer need not be 4-aligned, so no Float32Array view.
  for (let i = 0; i < count; i++) values[i] = data.readFloatLE(4 * i);
  return values;
}

// A short summary of an ExplainResponse, for the Python side to compare.
function summary(response) {
  return {
    model: response.model,
    method: response.method,
    shape: response.array ? response.array.shape.map(Number) : null,
    values: response.array ? float32s(response.array) : null,
    predictions: response.predictions.map((p) => ({ index: Number(p.index), label: p.label })),
    target: response.target,
  };
}

// The reflection protocol itself (v1's messages; v1alpha's are the same): what every
// reflection client carries. Only the fields these scripts use.
const REFLECTION = protobuf.Root.fromJSON({
  nested: {
    reflection: {
      nested: {
        ServerReflectionRequest: {
          oneofs: { message_request: { oneof: ['file_by_filename', 'file_containing_symbol', 'list_services'] } },
          fields: {
            host: { type: 'string', id: 1 },
            file_by_filename: { type: 'string', id: 3 },
            file_containing_symbol: { type: 'string', id: 4 },
            list_services: { type: 'string', id: 7 },
          },
        },
        ServerReflectionResponse: {
          fields: {
            valid_host: { type: 'string', id: 1 },
            file_descriptor_response: { type: 'FileDescriptorResponse', id: 4 },
            list_services_response: { type: 'ListServiceResponse', id: 6 },
            error_response: { type: 'ErrorResponse', id: 7 },
          },
        },
        FileDescriptorResponse: { fields: { file_descriptor_proto: { rule: 'repeated', type: 'bytes', id: 1 } } },
        ListServiceResponse: { fields: { service: { rule: 'repeated', type: 'ServiceResponse', id: 1 } } },
        ServiceResponse: { fields: { name: { type: 'string', id: 1 } } },
        ErrorResponse: { fields: { error_code: { type: 'int32', id: 1 }, error_message: { type: 'string', id: 2 } } },
      },
    },
  },
});
const ReflectionRequest = REFLECTION.lookupType('reflection.ServerReflectionRequest');
const ReflectionResponse = REFLECTION.lookupType('reflection.ServerReflectionResponse');

// Asks one reflection question on its own stream; resolves with the decoded answer.
function reflect(address, version, request) {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const call = client.makeBidiStreamRequest(
    `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`,
    (message) => Buffer.from(ReflectionRequest.encode(ReflectionRequest.fromObject(message)).finish()),
    (bytes) => ReflectionResponse.toObject(ReflectionResponse.decode(bytes), { defaults: false }),
  );
  return new Promise((resolve, reject) => {
    let answer = null;
    call.on('data', (response) => {
      answer = response;
      call.end();
    });
    call.on('error', (err) => {
      client.close();
      reject(err);
    });
    call.on('end', () => {
      client.close();
      if (answer === null) reject(new Error('reflection stream ended without an answer'));
      else resolve(answer);
    });
    call.write(request);
  });
}

// Every file a symbol needs, fetched over reflection alone: the file that defines it and,
// by name, any import the answers did not already include.
async function filesForSymbol(address, version, symbol) {
  const files = new Map();
  const add = (answer) => {
    if (answer.error_response) {
      throw new Error(`reflection error ${answer.error_response.error_code}: ${answer.error_response.error_message}`);
    }
    for (const bytes of answer.file_descriptor_response.file_descriptor_proto) {
      const file = descriptor.FileDescriptorProto.decode(bytes);
      files.set(file.name, file);
    }
  };
  add(await reflect(address, version, { file_containing_symbol: symbol }));
  for (;;) {
    const missing = [...files.values()].flatMap((f) => f.dependency || []).filter((d) => !files.has(d));
    if (missing.length === 0) break;
    add(await reflect(address, version, { file_by_filename: missing[0] }));
  }
  return [...files.values()];
}

// The leading comment of message.field in a FileDescriptorProto's source_code_info.
function leadingComment(file, message, field) {
  const m = file.messageType.findIndex((d) => d.name === message);
  const f = file.messageType[m].field.findIndex((d) => d.name === field);
  const want = [4, m, 2, f].join(','); // message_type = 4, field = 2
  const locations = (file.sourceCodeInfo && file.sourceCodeInfo.location) || [];
  const location = locations.find((l) => l.path.join(',') === want);
  return location ? location.leadingComments : null;
}

// google.rpc.Status and its detail messages, from the copies shipped beside the contract.
function rpcTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    const local = path.join(PROTOS, target);
    return fs.existsSync(local) ? local : target; // google/protobuf/*: protobufjs's own copies
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return root;
}

// What a failed call's trailer says: google.rpc.Status with each detail decoded by its type.
function statusDetails(err) {
  const values = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (values.length === 0) return null;
  const root = rpcTypes();
  const Status = root.lookupType('google.rpc.Status');
  const status = Status.decode(values[0]);
  return {
    code: status.code,
    message: status.message,
    details: status.details.map((any) => {
      const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
      const type = root.lookupType(typeName);
      return { type: typeName, ...type.toObject(type.decode(any.value), { longs: String }) };
    }),
  };
}

// Runs main and prints its result as one JSON line; any failure exits 1 with the reason.
function run(main) {
  main().then(
    (result) => {
      process.stdout.write(JSON.stringify(result) + '\n');
    },
    (err) => {
      process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    },
  );
}

// A unary call as a promise that resolves to {response} or {error}.
function unary(client, method, request, deadlineSeconds = 60) {
  const deadline = new Date(Date.now() + deadlineSeconds * 1000);
  return new Promise((resolve) => {
    client[method](request, { deadline }, (error, response) => resolve({ error, response }));
  });
}

module.exports = {
  LOADER_OPTIONS,
  explainerFromProto,
  filesForSymbol,
  float32s,
  grpc,
  leadingComment,
  protoLoader,
  reflect,
  run,
  statusDetails,
  summary,
  unary,
  descriptor,
};
