"""The audit trail: a tamper-evident history of every lock-log record (issue 16).

:mod:`~coordcore.audit.merkle` hashes (RFC 6962); :mod:`~coordcore.audit.journal` keeps
every record beside the log with who opened its sessions; :mod:`~coordcore.audit.checkpoint`
signs tree heads (Ed25519); :mod:`~coordcore.audit.trail` feeds them from a
:class:`~coordcore.locks.store.LogStore`; :mod:`~coordcore.audit.history` replays the
journal into events and exports them with proofs; :mod:`~coordcore.audit.verify` checks an
export; :mod:`~coordcore.audit.wire` serves AUDIT.*; :mod:`~coordcore.audit.cli` is
``coordcore audit``.
"""
