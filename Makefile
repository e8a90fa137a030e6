# srt-launcher — build, demo, test, benchmark.
# Every target installs what it needs on a fresh Debian machine (run as root).

SHELL := /bin/bash
# Debian's interpreter, not a pyenv build under /root: the unprivileged test
# runs (uid 65534) must be able to execute the venv's python.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check -q

SETUP_APT := python3-venv python3-dev gcc libcap-dev libseccomp2 util-linux
# python3-pip: tests/test_install.py installs with Debian's own pip (--user,
# --prefix, --root); bubblewrap and socat are the reference programs the
# front ends are compared with; ripgrep is what sandbox-runtime needs.
TEST_APT := tinyproxy openssh-server openssh-client git curl procps iproute2 strace \
	python3-pip bubblewrap socat ffmpeg ripgrep
# Node and npm (sandbox-runtime): Debian's only where none is on PATH — a
# NodeSource `nodejs` (Node 20) ships npm and conflicts with Debian's npm.
TEST_APT += $(if $(shell command -v node),,nodejs) $(if $(shell command -v npm),,npm)
BENCH_APT := bubblewrap socat procps

# The dependencies, also kept as wheels in $(VENV)/wheels with the project's
# own: tests/test_install.py installs from there (offline, and the very wheel
# `make setup` installed).
DEPS := click python-prctl pyseccomp pyroute2
SCRIPTS := scripts/srt-launcher scripts/srt-bwrap scripts/srt-socat scripts/srt-launcher-boot scripts/direct-start
SOURCES := $(shell find srt_launcher bpf -type f \( -name '*.py' -o -name '*.bpf' \) 2>/dev/null) $(SCRIPTS) pyproject.toml

.PHONY: setup demo test bench bpf clean

setup: $(VENV)/.installed

# Install missing Debian packages only (no apt traffic when all are present).
# policy-rc.d keeps sshd/tinyproxy from being started as services on install.
define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install:$$missing" >&2; exit 1; fi; \
	  cleanup=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; cleanup=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
	  [ -z "$$cleanup" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi
endef

$(VENV)/.deps: pyproject.toml
	$(call apt_ensure,$(SETUP_APT))
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	@# --use-pep517: python-prctl has only a setup.py, and the venv no `wheel`.
	$(PIP) wheel --use-pep517 -w $(VENV)/wheels $(DEPS)
	$(PIP) install --no-index --find-links $(VENV)/wheels $(DEPS)
	$(PIP) install pytest
	@# setuptools' distutils-precedence.pth runs on every interpreter start
	@# (≈0.3 ms per launch, measured); the package builds in pip's isolated env.
	$(PIP) uninstall -y setuptools
	touch $@

# A real (non-editable) install of the wheel, so the launcher under test is
# the one a user gets, bpf blobs included. World-readable for the uid-65534 runs.
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	@# Built from a scratch copy: no build/ or egg-info in the checkout, and
	@# two venvs can be (re)installed at once without sharing a build dir.
	@rm -f $(VENV)/wheels/srt_launcher-*.whl
	@stage=$$(mktemp -d) && cp -r pyproject.toml README.md srt_launcher bpf scripts "$$stage"/ && \
	  $(PIP) wheel --no-deps -w $(VENV)/wheels "$$stage" >/dev/null; \
	  rc=$$?; rm -rf "$$stage"; exit $$rc
	$(PIP) install --no-deps --force-reinstall $(VENV)/wheels/srt_launcher-*.whl >/dev/null
	@# The fast start (README, "Installation"): the commands become hard links
	@# to srt-launcher-boot, whose #! line carries -IS, instead of the /bin/sh
	@# wrappers pip wrote (one exec, ≈1 ms, less per launch).
	scripts/direct-start $(VENV)/bin
	@# The isolation must hold on this path too: refuse an install that lost it.
	@head -1 $(VENV)/bin/srt-launcher | grep -qx -- '#!/.*python[0-9.]* -IS' || \
	  { echo "make: $(VENV)/bin/srt-launcher does not start its interpreter with -IS" >&2; exit 1; }
	chmod -R a+rX $(VENV)
	touch $@

demo: setup
	@bash scripts/demo.sh $(VENV)/bin/srt-launcher

test: setup
	$(call apt_ensure,$(TEST_APT))
	$(VPY) -m pytest tests

bench: setup
	$(call apt_ensure,$(BENCH_APT))
	$(VPY) tests/bench/run_bench.py --venv $(VENV) $(BENCH_ARGS)

bpf: $(VENV)/.deps
	$(VPY) bpf/generate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
