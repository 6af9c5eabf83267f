"""Event names and typed events: what is accepted, and what the refusals say."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from stride import EventType, InvalidEventError, OutgoingEvent
from stride.events import MAX_EVENT_NAME_LENGTH, check_payload_size, validate_event_name

# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "context/file.uploaded", "user.signed_up", "billing/invoice-paid", "app:tick", "a", "0",
    "A/B", "stride/cron:nightly-report", "x" * MAX_EVENT_NAME_LENGTH,
])
def test_good_event_names(name: str) -> None:
    assert validate_event_name(name) == name


@pytest.mark.parametrize(("name", "message"), [
    ("", "event name must be a non-empty string, got ''"),
    (None, "event name must be a non-empty string, got None"),
    (42, "event name must be a non-empty string, got 42"),
    ("x" * (MAX_EVENT_NAME_LENGTH + 1), "is 257 characters; the limit is 256"),
    ("user signed up", "event name 'user signed up' has a character outside letters, digits "
                       "and . _ - / : (and must start with a letter or digit), e.g. "
                       "'context/file.uploaded'"),
    ("/leading", "must start with a letter or digit"),
    (".hidden", "must start with a letter or digit"),
    ("tab\tname", "has a character outside"),
    ("line\nbreak", "has a character outside"),
    ("café/ouvert", "has a character outside"),
    ("a*", "has a character outside"),
])
def test_bad_event_names_are_refused_with_the_rule(name: object, message: str) -> None:
    with pytest.raises(InvalidEventError) as raised:
        validate_event_name(name)

    assert message in str(raised.value)


def test_a_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="has a character outside"):
        validate_event_name("user/signed-up\n")


def test_a_long_name_is_quoted_shortened() -> None:
    with pytest.raises(InvalidEventError) as raised:
        validate_event_name("n" * 1000)

    assert len(str(raised.value)) < 200


@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\n"), min_size=1,
               max_size=300))
def test_a_name_is_valid_exactly_when_it_follows_the_rule(name: str) -> None:
    """(A newline is left out here: see the test above.)"""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:")
    follows = (len(name) <= MAX_EVENT_NAME_LENGTH and set(name) <= allowed
               and name[0].isalnum())
    try:
        validate_event_name(name)
    except InvalidEventError:
        assert not follows
    else:
        assert follows


# --- typed events ---------------------------------------------------------------------------


class FileUploaded(BaseModel):
    file_id: str
    size: int


class Address(BaseModel):
    city: str


class Customer(BaseModel):
    name: str
    addresses: list[Address]


FILE_UPLOADED = EventType("context/file.uploaded", FileUploaded)


def test_an_event_type_needs_a_valid_name() -> None:
    with pytest.raises(InvalidEventError, match="has a character outside"):
        EventType("file uploaded", FileUploaded)


def test_a_model_instance_becomes_its_json_form() -> None:
    assert FILE_UPLOADED.to_json_data(FileUploaded(file_id="f1", size=3)) == {
        "file_id": "f1", "size": 3}


def test_a_mapping_is_validated_and_coerced_by_the_model() -> None:
    assert FILE_UPLOADED.to_json_data({"file_id": "f1", "size": "3"}) == {
        "file_id": "f1", "size": 3}


def test_stored_data_parses_back_into_the_model() -> None:
    assert FILE_UPLOADED.parse({"file_id": "f1", "size": 3}) == FileUploaded(file_id="f1", size=3)


def test_a_schema_failure_names_the_event_and_the_field_path() -> None:
    with pytest.raises(InvalidEventError) as raised:
        FILE_UPLOADED.to_json_data({"size": "three"})

    assert str(raised.value) == (
        "event 'context/file.uploaded' failed its schema: data.file_id: Field required; "
        "data.size: Input should be a valid integer, unable to parse string as an integer")


def test_a_nested_failure_shows_the_whole_path() -> None:
    customers = EventType("crm/customer.created", Customer)

    with pytest.raises(InvalidEventError, match=r"data\.addresses\.1\.city: Field required"):
        customers.to_json_data({"name": "Ada", "addresses": [{"city": "Paris"}, {}]})


def test_a_schema_failure_lists_at_most_five_problems() -> None:
    class Wide(BaseModel):
        a: int
        b: int
        c: int
        d: int
        e: int
        f: int
        g: int

    with pytest.raises(InvalidEventError) as raised:
        EventType("wide/event", Wide).to_json_data({})

    message = str(raised.value)
    assert message.count("Field required") == 5
    assert message.endswith("(and 2 more)")


def test_data_that_is_not_an_object_names_the_model() -> None:
    with pytest.raises(InvalidEventError, match=re.escape(
            "event 'context/file.uploaded': data must be a FileUploaded or a JSON object, "
            "got list")):
        FILE_UPLOADED.to_json_data(["f1", 3])


def test_another_model_is_validated_through_its_json_form() -> None:
    class LegacyUpload(BaseModel):
        file_id: str
        size: int
        legacy: bool = True

    assert FILE_UPLOADED.to_json_data(LegacyUpload(file_id="f1", size=1)) == {
        "file_id": "f1", "size": 1}


def test_create_makes_an_outgoing_event() -> None:
    event = FILE_UPLOADED.create({"file_id": "f1", "size": 1}, id="e1", user={"id": "u1"})

    assert event == OutgoingEvent("context/file.uploaded", {"file_id": "f1", "size": 1},
                                  id="e1", user={"id": "u1"})


# --- payload size --------------------------------------------------------------------------------


def test_the_payload_limit_counts_data_and_user_bytes() -> None:
    data = {"k": "v" * 10}  # {"k":"vvvvvvvvvv"} is 18 bytes
    user = {"id": "u1"}  # {"id":"u1"} is 11 bytes

    check_payload_size("e/x", data, user, limit=29)
    with pytest.raises(InvalidEventError, match="payload is 29 bytes; the limit is 28 bytes"):
        check_payload_size("e/x", data, user, limit=28)
