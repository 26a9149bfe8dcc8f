.PHONY: demo test bench lint dashboards helm-sync

demo:        ## scheduler + exporter on SQLite with example tasks
	./scripts/demo.sh

test:        ## install what the tests need, lint, run every test
	./scripts/test.sh

bench:       ## benchmarks side by side with APScheduler (JSON in bench/out/)
	./scripts/bootstrap.sh all && .venv/bin/python -m bench run

dashboards:  ## regenerate dashboards/*.json from dashboards/build.py
	.venv/bin/python -m dashboards.build

helm-sync:   ## copy alerts/ and dashboards/ into the chart
	.venv/bin/python helm/sync_assets.py
