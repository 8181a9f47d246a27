"""The team set-up on one machine: a PostgreSQL server (:mod:`.postgres`), an MLflow tracking server
with basic authentication on it (:mod:`.server`, ``make team-server``), one GPU per worker process
(:mod:`.gpus`) and a live view of sweeps (:mod:`.dashboard`, ``make sweep-dashboard``).

The tests start exactly these, so what the README tells a lab to run is what CI runs.
"""
