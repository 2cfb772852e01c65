"""OpenAPI schema post-processing (drf-spectacular hook).

The submission body depends on the job type: each registered type gets its own request variant
whose `params` is that type's JSON Schema, joined with `oneOf` and a discriminator on `type`.
Bodies that refuse unknown fields say so with `additionalProperties: false`.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import registry
from ..conf import METADATA_KEY_MAX, METADATA_KEY_PATTERN, METADATA_MAX_KEYS

STRICT_COMPONENTS = ("JobCreateRequest", "JobBulkCreateRequest", "JobBulkCancelRequest")


def _component_name(type_name: str) -> str:
    return "".join(part.capitalize() for part in type_name.replace("-", "_").replace(".", "_").split("_"))


def nul_refused_everywhere(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Any request with a NUL character anywhere is refused with a 400 before it reaches a view
    (`web.middleware`), so every operation can answer 400."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault(
                "400",
                {
                    "description": "The request carries a NUL character.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
            )
    return result


def problem_media_type(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Error answers are `application/problem+json` (RFC 9457), not plain JSON."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                for media_type in list(content):
                    if content[media_type].get("schema", {}).get("$ref", "").endswith("/Problem"):
                        content["application/problem+json"] = content.pop(media_type)
    return result


def job_type_variants(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    schemas = result.get("components", {}).get("schemas", {})
    for name in STRICT_COMPONENTS:
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    if "JobBulkCancelRequest" in schemas:
        schemas["JobBulkCancelRequest"]["minProperties"] = 1  # a filter is required
    base = schemas.get("JobCreateRequest")
    if base is None:
        return result
    metadata = base["properties"].get("metadata")
    if metadata is not None:
        metadata["maxProperties"] = METADATA_MAX_KEYS
        metadata["propertyNames"] = {"pattern": METADATA_KEY_PATTERN.pattern, "maxLength": METADATA_KEY_MAX}
    variants, mapping = [], {}
    # In registration order: Swagger UI's example and "Try it out" take the first variant, which
    # should be a job that works (`sleep`), not the alphabetical first (`fail`).
    for job_type in registry.job_types_in_registration_order():
        stem = _component_name(job_type.name)
        params = copy.deepcopy(job_type.params_schema)
        params.setdefault("description", f"Parameters of the `{job_type.name}` job type.")
        schemas[f"{stem}Params"] = params
        variant = copy.deepcopy(base)
        # Swagger UI names each alternative by its title; without one it says "object".
        variant["title"] = f"{job_type.name} job"
        variant["description"] = f"Submit a `{job_type.name}` job: {job_type.description}"
        variant["properties"]["type"] = {"type": "string", "enum": [job_type.name]}
        variant["properties"]["params"] = {"$ref": f"#/components/schemas/{stem}Params"}
        # Swagger UI leaves the discriminator out of the example it builds, so "Try it out"
        # would send no type: each variant brings a complete, valid example of its own.
        variant["example"] = {"type": job_type.name, "params": registry.apply_defaults(job_type, {})}
        schemas[f"{stem}JobRequest"] = variant
        ref = f"#/components/schemas/{stem}JobRequest"
        variants.append({"$ref": ref})
        mapping[job_type.name] = ref
    schemas["JobCreateRequest"] = {
        "oneOf": variants,
        "discriminator": {"propertyName": "type", "mapping": mapping},
        "description": "A job submission; `params` follows the schema of the chosen `type`.",
    }
    return result
