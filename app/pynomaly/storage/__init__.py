"""Redis-backed records: jobs, datasets, results, the dead-letter queue and the audit log.

Redis runs with AOF (appendfsync everysec) and noeviction, so these records survive an API or
worker restart and are never evicted under memory pressure.
"""
