# `make demo` runs the platform with demo data, `make run` the same platform without them, `make test` the tests.
# Each creates .venv with Python 3.11 and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   := .data

.PHONY: demo run test venv venv-test test-deps db-start db-stop clean

# demo and run serve as in production: gunicorn, DEBUG off, and a SECRET_KEY (unless one is given) made once
# and kept in the data folder (mode 0600).
SERVE_ENV = export DEBUG=false; data="$${AVENGERS_DATA_DIR:-$(DATA)}"; \
	if [ -z "$$SECRET_KEY$$SECRET_KEY_FILE" ]; then \
		$(PY) -m devtools.local_platform secret-key "$$data/secret_key" && export SECRET_KEY_FILE="$$data/secret_key"; fi

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { bash scripts/ensure_system_deps.sh venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

## demo: embedded PostgreSQL + a local LLM (SmolLM2 on llama.cpp) + a Celery worker + the dashboard/API (gunicorn)
## on http://127.0.0.1:8000/ with real records. DEMO_ARGS passes options (e.g. DEMO_ARGS=--no-llm).
demo: venv
	@llm=; if [ -z "$(findstring --no-llm,$(DEMO_ARGS))" ]; then \
		echo "== make demo: installing the local LLM (llama.cpp server + SmolLM2-135M; built once per machine) =="; \
		bash scripts/install_test_llm.sh $(VENV) || { llm=--no-llm; \
		echo "== make demo: the local LLM could not be installed (see above); the demo runs without it =="; }; fi; \
	bash scripts/ensure_system_deps.sh sandbox || echo "== make demo: bubblewrap is missing: code grading refuses to run (docs/GRADING.md) =="; \
	echo "== make demo: starting the platform =="; \
	$(SERVE_ENV); exec $(PY) manage.py demo $$llm $(DEMO_ARGS)

## run: the same platform without demo data (embedded PostgreSQL unless DATABASE_URL is set, a Celery worker,
## gunicorn on http://127.0.0.1:8000/). RUN_ARGS passes options (e.g. RUN_ARGS="--host 0.0.0.0 --port 8080").
run: venv
	@$(SERVE_ENV); exec $(PY) manage.py serve $(RUN_ARGS)

test-deps: venv-test
	bash scripts/ensure_system_deps.sh
	bash scripts/install_test_llm.sh $(VENV)

## test: real PostgreSQL (embedded), Redis, a Celery worker, a real LLM server and headless Chromium.
test: test-deps
	status=0; $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	$(PY) -m devtools.embedded_db stop $(DATA)/test/pg >/dev/null; \
	exit $$status

db-start: venv
	$(PY) -m devtools.embedded_db start $(DATA)/pg
db-stop: venv
	$(PY) -m devtools.embedded_db stop $(DATA)/pg

clean: db-stop
	rm -rf $(DATA) test-artifacts
