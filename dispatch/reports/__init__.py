"""Reports over the read models: response times, incident history, statistics, group readiness."""
