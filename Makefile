# deepvis: `make demo` and `make test` work from a fresh clone.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ADDRESS ?= 127.0.0.1:50077

.PHONY: install demo test test-fast proto check lint clean

# Also installs the Node.js client tests' modules from their lockfile where npm exists
# (without node those tests are skipped), and Debian's chromium for the report's browser
# tests where it is missing and apt-get can install it (root on Debian, as CI is): Playwright
# drives that binary; it never downloads a browser of its own.
$(STAMP): pyproject.toml tests/node/package-lock.json tools/install_chromium.sh
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[server,dev]'
	if command -v npm >/dev/null 2>&1; then cd tests/node && npm ci --no-audit --no-fund; fi
	sh tools/install_chromium.sh
	touch $(STAMP)

install: $(STAMP)

# Regenerates the stubs in client/deepvis/v1 from the .proto (a test checks they match),
# and deepvis.binpb, its descriptor set with the comments, which server reflection serves.
# The generator is pinned and kept apart from the venv: stubs made by an older protoc
# run on every protobuf runtime >= 5.27.2, so the thin client fits beside other packages.
# health_pb2 comes from the descriptor of grpcio-health-checking's grpc_health/v1/health.proto
# (the server extra ships no .proto), so that the thin client checks health without it.
PROTO_TOOLS := $(VENV)/proto-tools
HEALTH_OUT := $(PROTO_TOOLS)/health
proto: $(STAMP)
	test -d $(PROTO_TOOLS)/grpc_tools || $(VPY) -m pip install -q --target $(PROTO_TOOLS) grpcio-tools==1.66.2
	PYTHONPATH=$(PROTO_TOOLS) $(VPY) -m grpc_tools.protoc -Iprotos --python_out=client \
		--pyi_out=client --grpc_python_out=client \
		--include_source_info --descriptor_set_out=client/deepvis/v1/deepvis.binpb \
		protos/deepvis/v1/deepvis.proto
	rm -rf $(HEALTH_OUT) && mkdir -p $(HEALTH_OUT)
	$(VPY) tools/health_descriptor_set.py $(HEALTH_OUT)/health.protoset
	PYTHONPATH=$(PROTO_TOOLS) $(VPY) -m grpc_tools.protoc \
		--descriptor_set_in=$(HEALTH_OUT)/health.protoset --python_out=$(HEALTH_OUT) \
		--pyi_out=$(HEALTH_OUT) grpc_health/v1/health.proto
	cp $(HEALTH_OUT)/grpc_health/v1/health_pb2.py $(HEALTH_OUT)/grpc_health/v1/health_pb2.pyi \
		client/deepvis/v1/

# Pictures under out/ and out/report.html, the page comparing the methods on every sample.
demo: $(STAMP)
	$(VPY) -m deepvis_server.demo --address $(ADDRESS) --out out

# The whole suite, what CI runs (.ci/run): about 8 min on a 2-core machine.
test: $(STAMP)
	$(VPY) -m pytest -q

# The inner loop: the tests marked `fast` (the client's conversions, CLI parsing and calls
# against a fake server, bad input, the schema and its stubs, the method registry on the
# digits model, the deployment files): about 30 s on a 2-core machine, 330 tests.
test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "fast and not gpu and not slow"

# Formatting, lint and types, as CI checks them after the tests; mypy checks for Python 3.10,
# the floor of requires-python. .pre-commit-config.yaml runs the same tools before a commit.
PY_SOURCES := client server tests bench tools examples
check: $(STAMP)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/mypy $(PY_SOURCES)

lint: check

clean:
	rm -rf $(VENV) out .pytest_cache
