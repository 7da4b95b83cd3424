"""Benchmarks of the gateway's bulk paths; see loadtests/README.md. Run each as `python -m loadtests.NAME`."""
