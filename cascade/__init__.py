"""Cascade: batch LLM work through cheap-first model tiers, verified, escalated only when an answer fails.

This folder is the import root and holds what every part shares and that imports no other part:
the value objects (`cascade.models`), the error tree (`cascade.errors`) and the recorded-answers
format (`cascade.recorded`). The subpackages come from the repository's top-level folders:
`cascade.worker` (worker/), `cascade.producer` (producer/), `cascade.verifiers` (verifiers/),
`cascade.tuning` (tuning/), `cascade.simulator` (simulator/), `cascade.cli` (cli/), and the starter
configuration `cascade.config` (config/).
"""
