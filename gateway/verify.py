"""`python -m gateway.verify bundle.zip`: the offline verifier under the name every report prints.

The verifier is gateway/audit/verify.py; this name stays because exported reports tell third parties
to run it.
"""

from gateway.audit.verify import main

if __name__ == "__main__":
    raise SystemExit(main())
