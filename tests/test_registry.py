"""The job type registry: registration rules, parameter validation and defaults.

Test types use names starting with "test-" so they never collide with the built-ins; the
`fresh_registry` fixture removes whatever a test added to the module-level registry.
"""

from __future__ import annotations

import pytest

from tasks_app import registry
from tasks_app.registry import JobType, UnknownJobType, job_type


def _noop(ctx, **params):
    return None


def register(name: str, schema: dict, func=None, **kwargs) -> JobType:
    job_type(name, description=f"{name} for tests", params_schema=schema, **kwargs)(func or _noop)
    return registry.get_job_type(name)


OBJECT = {"type": "object"}

NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "count": {"type": "integer", "minimum": 1, "default": 3},
        "size": {
            "type": "object",
            "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
            "required": ["width", "height"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


# --- registering ----------------------------------------------------------------------------


def test_registering_a_type_makes_it_available(fresh_registry):
    def func(ctx, **params):
        return {"ok": True}

    returned = job_type(
        "test-reg-basic",
        description="A test type",
        params_schema={"type": "object", "properties": {"x": {"type": "integer"}}},
        retry_on=[ConnectionError],
        default_timeout=30,
    )(func)

    assert returned is func  # the decorator hands the function back unchanged
    jt = registry.get_job_type("test-reg-basic")
    assert jt.name == "test-reg-basic"
    assert jt.func is func
    assert jt.description == "A test type"
    assert jt.params_schema == {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert jt.retry_on == (ConnectionError,)
    assert isinstance(jt.retry_on, tuple)
    assert jt.default_timeout == 30
    assert jt.validator is not None
    assert "test-reg-basic" in [t.name for t in registry.all_job_types()]


def test_defaults_of_a_registration(fresh_registry):
    jt = register("test-reg-defaults", OBJECT)
    assert jt.retry_on == ()
    assert jt.default_timeout is None


@pytest.mark.parametrize("name", ["test-a.b_c-1", "test_UPPER", "test.9"])
def test_names_with_letters_digits_dots_dashes_underscores_are_accepted(fresh_registry, name):
    register(name, OBJECT)
    assert registry.get_job_type(name).name == name


@pytest.mark.parametrize("name", ["", "test space", "test/slash", "test:colon", "test$", "test\n"])
def test_invalid_names_are_refused(fresh_registry, name):
    with pytest.raises(ValueError, match="use letters, digits"):
        job_type(name, description="x", params_schema=OBJECT)
    assert name not in registry._registry


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"x": {"type": "not-a-type"}}},
        {"type": "object", "required": "x"},  # must be an array
        {"type": "object", "properties": {"x": {"minimum": "zero"}}},
        {"type": 12},
    ],
)
def test_invalid_json_schemas_are_refused(fresh_registry, schema):
    with pytest.raises(ValueError, match="invalid params schema"):
        job_type("test-bad-schema", description="x", params_schema=schema)
    assert "test-bad-schema" not in registry._registry


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "array"},
        {"type": "string"},
        {"properties": {"x": {"type": "integer"}}},  # valid schema, but not declared an object
        {"type": ["object", "null"]},
    ],
)
def test_schemas_not_describing_an_object_are_refused(fresh_registry, schema):
    with pytest.raises(ValueError, match="must describe an object"):
        job_type("test-not-object", description="x", params_schema=schema)
    assert "test-not-object" not in registry._registry


def test_a_duplicate_name_is_refused_and_keeps_the_first_registration(fresh_registry):
    def first(ctx):
        return 1

    def second(ctx):
        return 2

    register("test-dup", OBJECT, first)
    with pytest.raises(ValueError, match="already registered"):
        register("test-dup", {"type": "object", "properties": {"y": {}}}, second)
    jt = registry.get_job_type("test-dup")
    assert jt.func is first
    assert jt.params_schema == OBJECT


@pytest.mark.parametrize("builtin", ["sleep", "primes", "fail"])
def test_a_builtin_name_cannot_be_taken_over(fresh_registry, builtin):
    original = registry.get_job_type(builtin)
    with pytest.raises(ValueError, match="already registered"):
        register(builtin, OBJECT)
    assert registry.get_job_type(builtin) is original


def test_registering_the_same_function_again_is_allowed(fresh_registry):
    # A module imported twice (reloads, autoreload) registers the same function again.
    register("test-same", OBJECT, _noop)
    register("test-same", {"type": "object", "properties": {"z": {}}}, _noop)
    assert registry.get_job_type("test-same").params_schema == {"type": "object", "properties": {"z": {}}}


def test_unknown_type_raises_unknown_job_type():
    with pytest.raises(UnknownJobType) as excinfo:
        registry.get_job_type("test-does-not-exist")
    assert isinstance(excinfo.value, LookupError)
    assert "test-does-not-exist" in str(excinfo.value)


def test_all_job_types_is_sorted_by_name(fresh_registry):
    register("test-zz", OBJECT)
    register("test-aa", OBJECT)
    names = [jt.name for jt in registry.all_job_types()]
    assert names == sorted(names)
    assert {"test-zz", "test-aa"} <= set(names)


# --- validate_params ------------------------------------------------------------------------


@pytest.fixture
def nested(fresh_registry) -> JobType:
    return register("test-nested", NESTED_SCHEMA)


def test_valid_params_give_no_errors(nested):
    assert registry.validate_params(nested, {"name": "x"}) == {}
    full = {"name": "x", "size": {"width": 1, "height": 2}, "tags": ["a"]}
    assert registry.validate_params(nested, full) == {}


def test_missing_required_key_is_reported_under_its_own_name(nested):
    assert registry.validate_params(nested, {}) == {"name": ["This field is required."]}


def test_unknown_key_is_reported_under_its_own_name(nested):
    assert registry.validate_params(nested, {"name": "x", "colour": "red"}) == {"colour": ["Unknown field."]}


def test_several_unknown_keys_each_get_an_entry(nested):
    errors = registry.validate_params(nested, {"name": "x", "b": 1, "a": 2})
    assert errors == {"a": ["Unknown field."], "b": ["Unknown field."]}


def test_type_error_is_reported_at_its_path(nested):
    errors = registry.validate_params(nested, {"name": 5})
    assert list(errors) == ["name"]
    assert len(errors["name"]) == 1
    assert "is not of type 'string'" in errors["name"][0]


def test_constraint_error_is_reported_at_its_path(nested):
    errors = registry.validate_params(nested, {"name": "x", "count": 0})
    assert list(errors) == ["count"]
    assert "minimum" in errors["count"][0] or "less than" in errors["count"][0]


def test_nested_type_error_has_a_dotted_path(nested):
    errors = registry.validate_params(nested, {"name": "x", "size": {"width": "wide", "height": 1}})
    assert list(errors) == ["size.width"]
    assert "is not of type 'integer'" in errors["size.width"][0]


def test_nested_unknown_key_has_a_dotted_path(nested):
    errors = registry.validate_params(nested, {"name": "x", "size": {"width": 1, "height": 1, "depth": 1}})
    assert errors == {"size.depth": ["Unknown field."]}


def test_nested_missing_key_has_a_dotted_path(nested):
    errors = registry.validate_params(nested, {"name": "x", "size": {"width": 1}})
    assert errors == {"size.height": ["This field is required."]}


def test_array_item_error_path_includes_the_index(nested):
    errors = registry.validate_params(nested, {"name": "x", "tags": ["ok", 7]})
    assert list(errors) == ["tags.1"]


def test_several_errors_at_once_are_all_reported(nested):
    params = {"count": "many", "extra": 1, "size": {"width": 1, "height": "h"}}
    errors = registry.validate_params(nested, params)
    assert set(errors) == {"name", "count", "extra", "size.height"}
    assert errors["name"] == ["This field is required."]
    assert errors["extra"] == ["Unknown field."]


def test_non_object_params_are_reported_on_the_whole(nested):
    errors = registry.validate_params(nested, ["not", "an", "object"])
    assert list(errors) == [""]
    assert "is not of type 'object'" in errors[""][0]


def test_two_missing_required_keys_are_each_reported_once(fresh_registry):
    jt = register(
        "test-two-required",
        {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"]},
    )
    # jsonschema yields one "required" error per missing key; each key must be listed once.
    assert registry.validate_params(jt, {}) == {
        "a": ["This field is required."],
        "b": ["This field is required."],
    }


def test_nested_required_looks_at_the_nested_object_not_the_top_level(nested):
    # "height" is present inside "size"; only "width" is missing there.
    errors = registry.validate_params(nested, {"name": "x", "size": {"height": 2}})
    assert errors == {"size.width": ["This field is required."]}


def test_nested_required_key_also_present_at_top_level_is_still_reported(fresh_registry):
    jt = register(
        "test-shadowed-required",
        {
            "type": "object",
            "properties": {
                "width": {"type": "integer"},
                "size": {"type": "object", "properties": {"width": {}}, "required": ["width"]},
            },
        },
    )
    errors = registry.validate_params(jt, {"width": 1, "size": {}})
    assert errors == {"size.width": ["This field is required."]}


def test_keys_allowed_by_pattern_properties_are_not_unknown(fresh_registry):
    jt = register(
        "test-pattern",
        {
            "type": "object",
            "properties": {"a": {}},
            "patternProperties": {"^x-": {}},
            "additionalProperties": False,
        },
    )
    assert registry.validate_params(jt, {"a": 1, "x-trace": 2}) == {}
    assert registry.validate_params(jt, {"x-trace": 2, "bad": 3}) == {"bad": ["Unknown field."]}


# --- apply_defaults -------------------------------------------------------------------------


def test_apply_defaults_fills_missing_top_level_keys(nested):
    assert registry.apply_defaults(nested, {"name": "x"}) == {"name": "x", "count": 3}


def test_apply_defaults_keeps_given_values_even_falsy_ones(fresh_registry):
    jt = register(
        "test-falsy",
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer", "default": 5},
                "s": {"type": ["string", "null"], "default": "d"},
                "b": {"type": "boolean", "default": True},
            },
        },
    )
    assert registry.apply_defaults(jt, {"n": 0, "s": None, "b": False}) == {"n": 0, "s": None, "b": False}


def test_apply_defaults_does_not_mutate_its_input(nested):
    params = {"name": "x"}
    filled = registry.apply_defaults(nested, params)
    assert params == {"name": "x"}
    assert filled is not params


def test_apply_defaults_without_properties_returns_a_copy(fresh_registry):
    jt = register("test-no-props", OBJECT)
    params = {"anything": 1}
    filled = registry.apply_defaults(jt, params)
    assert filled == {"anything": 1}
    assert filled is not params


def test_apply_defaults_ignores_nested_defaults(fresh_registry):
    jt = register(
        "test-nested-default",
        {
            "type": "object",
            "properties": {"opt": {"type": "object", "properties": {"k": {"type": "integer", "default": 1}}}},
        },
    )
    assert registry.apply_defaults(jt, {}) == {}
    assert registry.apply_defaults(jt, {"opt": {}}) == {"opt": {}}


# --- built-in types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys"),
    [("sleep", {"seconds", "steps"}), ("primes", {"n", "chunk"}), ("fail", {"message", "error", "delay"})],
)
def test_builtin_types_are_registered_with_object_schemas(name, keys):
    jt = registry.get_job_type(name)
    assert jt.name == name
    assert callable(jt.func)
    assert jt.description
    assert jt.params_schema["type"] == "object"
    assert set(jt.params_schema["properties"]) == keys
    assert jt.params_schema["additionalProperties"] is False
    # Every built-in runs with no params at all: each key has a default.
    assert registry.validate_params(jt, {}) == {}
    assert set(registry.apply_defaults(jt, {})) == keys


def test_builtin_defaults():
    assert registry.apply_defaults(registry.get_job_type("sleep"), {}) == {"seconds": 5, "steps": 10}
    assert registry.apply_defaults(registry.get_job_type("primes"), {}) == {"n": 1_000_000, "chunk": 100_000}
    assert registry.apply_defaults(registry.get_job_type("fail"), {}) == {
        "message": "This job failed on purpose.",
        "error": "DemoError",
        "delay": 0,
    }


@pytest.mark.parametrize(
    ("name", "params", "path"),
    [
        ("sleep", {"seconds": -1}, "seconds"),
        ("sleep", {"seconds": 86401}, "seconds"),
        ("sleep", {"seconds": "5"}, "seconds"),
        ("sleep", {"steps": 0}, "steps"),
        ("sleep", {"steps": 1.5}, "steps"),
        ("sleep", {"minutes": 1}, "minutes"),
        ("primes", {"n": 1}, "n"),
        ("primes", {"chunk": 999}, "chunk"),
        ("fail", {"error": "KeyError"}, "error"),
        ("fail", {"message": 3}, "message"),
    ],
)
def test_builtin_schemas_refuse_bad_params(name, params, path):
    errors = registry.validate_params(registry.get_job_type(name), params)
    assert list(errors) == [path]
    assert errors[path]


# --- queues ------------------------------------------------------------------------------------


def test_a_type_goes_to_the_default_queue_unless_it_names_one(fresh_registry):
    from tasks_app.conf import JOB_QUEUE

    assert register("test-default-queue", OBJECT).queue == JOB_QUEUE
    assert register("test-cpu", OBJECT, queue="cpu").queue == "cpu"
    assert registry.queue_of("test-cpu") == "cpu"
    assert registry.queue_of("test-no-such-type") == JOB_QUEUE
    assert registry.job_queues() == [JOB_QUEUE, "cpu"]


@pytest.mark.parametrize(
    ("queue", "reason"),
    [
        ("", "use up to 100"),
        ("has space", "use up to 100"),
        ("x" * 101, "use up to 100"),
        ("longrun.maintenance", "Longrun's own"),
        ("longrun.webhooks", "Longrun's own"),
    ],
)
def test_invalid_queues_are_refused(fresh_registry, queue, reason):
    with pytest.raises(ValueError, match=reason):
        register("test-bad-queue", OBJECT, queue=queue)
    assert "test-bad-queue" not in fresh_registry


@pytest.mark.django_db
def test_job_queue_filter_splits_jobs_by_their_types_queue(fresh_registry, user):
    from tasks_app.conf import JOB_QUEUE
    from tasks_app.models import Job

    register("test-cpu", OBJECT, queue="cpu")
    cpu = Job.objects.create(type="test-cpu", owner=user)
    default = Job.objects.create(type="sleep", owner=user)
    unknown = Job.objects.create(type="test-gone", owner=user)
    assert set(Job.objects.filter(registry.job_queue_filter("cpu"))) == {cpu}
    assert set(Job.objects.filter(registry.job_queue_filter(JOB_QUEUE))) == {default, unknown}
    assert not Job.objects.filter(registry.job_queue_filter("nobody-routes-here")).exists()
