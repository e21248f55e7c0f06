"""Active health checks (issue 17): config model, match evaluation, the prober process."""
