"""The job domain: a job's lifecycle and budget (:mod:`service.jobs.state`), the Optuna studies
loaded per process, and client-evaluated trials under leases (:mod:`service.jobs.leases`)."""
