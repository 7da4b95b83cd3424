import pytest
from gateway import sharing
from tests.test_schemathesis import gateway, test_the_app_answers_as_its_openapi_document_says as run  # noqa: F401

@pytest.mark.parametrize("mutate", [True])
def test_mutant_digits(monkeypatch, gateway, demo_content, mutate):
    if mutate:
        monkeypatch.setattr(sharing, "_whole", lambda t: t.isdigit())
    try:
        run("member", gateway, demo_content)
        print("NOTHING", mutate)
    except AssertionError as e:
        print("CAUGHT", mutate, str(e)[:700])
