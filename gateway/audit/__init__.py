"""The evidence stack: audit events, the group-commit writer and the usage it commits with them,
signed checkpoints, evidence bundles, their report and the offline verifier.

It imports no domain module: the domain records events here, never the other way round. The
verifier (verify.py) and the formats it reads (format.py, events.py, report.py) need neither a
database driver nor a web framework.
"""
