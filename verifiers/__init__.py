"""Pluggable answer checks. A verifier takes a job and an attempt and returns a verdict.

Verifiers know nothing of Celery or Redis; those that call a model get a provider handle
passed in through `VerifyContext`, never build one.
"""

from cascade.verifiers.base import Verifier, VerifyContext
from cascade.verifiers.registry import build_chain, build_verifier, known_verifiers

__all__ = ["Verifier", "VerifyContext", "build_chain", "build_verifier", "known_verifiers"]
