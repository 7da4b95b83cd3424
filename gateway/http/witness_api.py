"""The witness's HTTP interface (c2sp.org/tlog-witness): `POST /add-checkpoint` and the monitoring
`GET /<origin hash>/checkpoint`, over gateway/witness.py, which decides every answer."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.witness import MAX_BODY_BYTES, Answer, Witness


def _response(answer: Answer) -> Response:
    # The header as given: Starlette would add "; charset=utf-8" to text/x.tlog.size, which the spec fixes.
    return Response(answer.body, answer.status, headers={"content-type": answer.content_type})


async def add_checkpoint(request: Request) -> Response:
    witness: Witness = request.app.state.witness
    body = bytearray()
    async for chunk in request.stream():  # read no more than a request may hold
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _response(Answer(400, f"the body is larger than {MAX_BODY_BYTES} bytes\n"))
    return _response(witness.add_checkpoint(bytes(body)))


async def checkpoint(request: Request) -> Response:
    witness: Witness = request.app.state.witness
    return _response(witness.checkpoint(request.path_params["origin_hash"]))


def build_witness_app(witness: Witness) -> Starlette:
    app = Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
                            Route("/{origin_hash:str}/checkpoint", checkpoint, methods=["GET"])])
    app.state.witness = witness
    return app
