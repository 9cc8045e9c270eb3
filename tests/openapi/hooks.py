"""Schemathesis hooks for the control API's contract test (tests/it/openapi.rs loads this
module through SCHEMATHESIS_HOOKS): how a generated NDJSON body goes on the wire."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """`POST /v1/streams`: the document gives the body as an array of line objects; each is
    one line of JSON. Anything else (a negative test's body that is not an array) goes as
    one line of JSON that is not an object, as no array of lines could: were it sent as
    itself, an object would read as a line, and a body outside the schema as one in it."""
    if not isinstance(value, list):
        return json.dumps([value]).encode() + b"\n"
    return b"".join(json.dumps(line).encode() + b"\n" for line in value)
