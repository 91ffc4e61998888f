"""Operating a cascade unattended: schedules, SLO alerts, shadow audits, metrics and the batch report."""
