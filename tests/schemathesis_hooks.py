"""Loaded by the `schemathesis run` of test_server_schema.py (SCHEMATHESIS_HOOKS): the built-in
positive_data_acceptance check, except for 400s whose error code names a rule that the OpenAPI
document states in words because no JSON schema can (the prompt's tokens against the model's
context, fields that contradict each other, schemas the grammar compiler refuses, messages the
chat template refuses). Every other 400 to a schema-valid request still fails the run."""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

DOCUMENTED_CODES = {"context_length_exceeded", "conflicting_fields", "invalid_json_schema",
                    "template_error"}


@schemathesis.check
def positive_data_acceptance_but_documented_rules(ctx, response, case):
    if response.status_code == 400:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if code in DOCUMENTED_CODES:
            return True
    return positive_data_acceptance(ctx, response, case)
