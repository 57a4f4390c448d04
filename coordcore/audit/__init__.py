"""The audit trail: a tamper-evident history of every lock-log record (issue 16).

:mod:`~coordcore.audit.merkle` hashes (RFC 6962); :mod:`~coordcore.audit.trail` keeps the
journal, tree and signed checkpoints beside a log; :mod:`~coordcore.audit.history`
turns records into events; :mod:`~coordcore.audit.verify` checks an export.
"""
