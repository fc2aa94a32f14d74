# Build the BPF objects (CO-RE, against a vmlinux.h generated from the running
# kernel's BTF), run the tests, install the build tools.
BUILD    ?= build
CLANG    ?= clang
BPFTOOL  ?= bpftool
PYTHON   ?= python3
ARCH     := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
BPFFLAGS := -O2 -g -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Ibpf -Wall -Wno-unused-function

BPF_OBJS  := $(patsubst bpf/%.bpf.c,$(BUILD)/%.bpf.o,$(wildcard bpf/*.bpf.c))
TEST_OBJS := $(patsubst tests/bpf/%.bpf.c,$(BUILD)/tests/%.bpf.o,$(wildcard tests/bpf/*.bpf.c))
DEB_TOOLS := clang llvm libbpf-dev bpftool make python3-pytest
# Test-only: a real server no one here wrote (observed mode), and ss(8).
DEB_TOOLS += python3-uvicorn iproute2
# make deb and its test: package build, lint, man page checks, the C SDK header test.
DEB_TOOLS += build-essential dpkg-dev debhelper dh-python lintian man-db mandoc

.PHONY: all test-objs test deps clean bench-loader
all: $(BPF_OBJS)
test-objs: $(TEST_OBJS)

$(BUILD)/vmlinux.h:
	@mkdir -p $(@D)
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp
	mv $@.tmp $@

$(BUILD)/%.bpf.o: bpf/%.bpf.c $(BUILD)/vmlinux.h $(wildcard bpf/*.h)
	$(CLANG) $(BPFFLAGS) -c $< -o $@

$(BUILD)/tests/%.bpf.o: tests/bpf/%.bpf.c $(BUILD)/vmlinux.h $(wildcard tests/bpf/*.h)
	@mkdir -p $(@D)
	$(CLANG) $(BPFFLAGS) -Itests/bpf -c $< -o $@

test: all test-objs
	$(PYTHON) -m pytest -q tests

bench-loader: all
	$(PYTHON) bench/loader

# Debian build/test tools; a no-op when all are present.
deps:
	@missing=$$(for p in $(DEB_TOOLS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(BUILD)

# The Debian package, built from a copy of the tree so the package build's clean
# step cannot touch this build/: the .deb ends up in $(BUILD)/deb/.
.PHONY: deb
deb:
	rm -rf $(BUILD)/deb
	mkdir -p $(BUILD)/deb/hermes
	tar -c --exclude=./build --exclude=./.git --exclude=__pycache__ --exclude=.pytest_cache . \
		| tar -x -C $(BUILD)/deb/hermes
	cd $(BUILD)/deb/hermes && dpkg-buildpackage -us -uc -b
	@ls $(BUILD)/deb/*.deb

# Benchmarks against the peers (issue 7): wrk from Debian drives the cases; the
# soak is a reliability run (>= 10 minutes), not part of `make test`.
.PHONY: bench-deps bench bench-quick soak
bench-deps:
	@dpkg-query -W -f='$${Status}\n' wrk 2>/dev/null | grep -q '^install ok installed' || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }

bench: all bench-deps
	$(PYTHON) bench/run

bench-quick: all bench-deps
	$(PYTHON) bench/run --quick

soak: all
	$(PYTHON) bench/run soak --minutes $(or $(SOAK_MINUTES),10)

# Kernel matrix (tests/kernels/run): the privileged loader and dispatcher tests and
# a launcher smoke test on Debian's kernels in qemu (TCG when nested KVM fails),
# and on the running kernel ("host").  Kernels are cached in /var/cache/hermes-kernels.
KERNELS ?= 5.10 6.1 6.12 host
.PHONY: test-kernels
test-kernels: all test-objs
	KERNELS="$(KERNELS)" PYTHON=$(PYTHON) tests/kernels/run
