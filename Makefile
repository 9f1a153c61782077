# The two commands of the README, and what they stand on.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test

system-deps:
	@command -v jackd >/dev/null && command -v mosquitto >/dev/null && command -v systemd-analyze >/dev/null && command -v cc >/dev/null || { \
	  ($(SUDO) apt-get update -qq || true) && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jackd2 mosquitto mosquitto-clients systemd gcc libc6-dev >/dev/null; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[training,test]"
	touch $@

setup: system-deps $(VENV)/.installed

demo: setup
	$(VENV)/bin/antiphon demo --out out/demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider
