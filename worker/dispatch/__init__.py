"""How attempt messages reach a tier: Celery queues (distributed) or thread pools (embedded)."""
