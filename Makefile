# The two commands of the README. Both build .venv first if needed (scripts/setup_env.sh).
PY := .venv/bin/python
ARGS ?=

.PHONY: venv run test test-fast clean

venv:
	@bash scripts/setup_env.sh

run: venv
	$(PY) pipeline.py run $(ARGS)

test: venv
	@bash scripts/ensure_browser.sh
	$(PY) -m pytest $(ARGS)

test-fast: venv
	$(PY) -m pytest -m "not e2e" $(ARGS)

clean:
	rm -rf pipeline_output .pytest_cache
