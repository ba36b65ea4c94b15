"""Each builtin PII detector: true positives become typed placeholders, near misses are left alone."""

import pytest

from posttrain.hygiene.pii import PIIBackendError, Redactor, iban_ok, luhn_ok, redact_builtin, redact_record

POSITIVES = [
    ("email", "write to jane.doe+news@mail.example.co.uk today", "write to [EMAIL] today"),
    ("phone", "call 555-867-5309 now", "call [PHONE] now"),
    ("phone", "call (555) 867-5309 now", "call [PHONE] now"),
    ("phone", "ring +44 20 7946 0958 please", "ring [PHONE] please"),
    ("credit_card", "card 4111 1111 1111 1111 exp", "card [CREDIT_CARD] exp"),
    ("credit_card", "card 5500-0000-0000-0004.", "card [CREDIT_CARD]."),
    ("credit_card", "amex 378282246310005", "amex [CREDIT_CARD]"),
    ("ipv4", "host 192.168.10.254 is up", "host [IPV4] is up"),
    ("ipv6", "host 2001:db8:85a3::8a2e:370:7334 is up", "host [IPV6] is up"),
    ("ipv6", "loopback ::1 only", "loopback [IPV6] only"),
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", "pay [IBAN] now"),
    ("iban", "pay GB82WEST12345698765432 now", "pay [IBAN] now"),
    ("us_ssn", "ssn 123-45-6789 on file", "ssn [US_SSN] on file"),
    ("url_credentials", "clone https://alice:s3cret@git.example.com/repo.git",
     "clone https://[URL_CREDENTIALS]@git.example.com/repo.git"),
    ("secret", "key sk-proj-abcdefghijklmnopqrstuvwx1234 here", "key [SECRET] here"),
    ("secret", "AKIAIOSFODNN7EXAMPLE is the id", "[SECRET] is the id"),
    ("secret", "ghp_" + "a1B2" * 9 + " token", "[SECRET] token"),
    ("secret", "api_key = 'Zx81kQ0pLmN4vB7tYw2r'", "api_key = '[SECRET]'"),
]

NEAR_MISSES = [
    "card 4111 1111 1111 1112 fails Luhn",  # 16 digits, Luhn fails
    "order number 1234567890123456",  # 16 digits, Luhn fails
    "not an email: jane.doe@localhost",  # no top-level domain
    "version 256.1.1.1 is not an address",  # octet > 255
    "the time is 12:30:45",  # not IPv6
    "std::vector<int> and a::b",  # C++ scopes
    "iban DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "ssn 000-12-3456 and 666-12-3456 are never issued",
    "call 555-1234",  # too few digits for a phone
    "the date 2024-01-15",
    "https://example.com/path?user=bob",  # no credentials
    "sk-short and AKIA1234",  # too short to be keys
    "password = hunter2",  # value too short to call a secret
]


@pytest.mark.parametrize("kind,text,expected", POSITIVES)
def test_detector_true_positive(kind, text, expected):
    out, counts = redact_builtin(text)
    assert out == expected
    assert counts == {kind: 1}


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_detector_near_miss_left_alone(text):
    out, counts = redact_builtin(text)
    assert out == text
    assert not counts


def test_luhn_and_iban_checks():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")  # one character short for Germany


def test_counts_accumulate_and_types_filter():
    redactor = Redactor(types=("email",))
    assert redactor("a@b.io and 555-867-5309") == "[EMAIL] and 555-867-5309"
    assert redactor("c@d.io, e@f.io") == "[EMAIL], [EMAIL]"
    assert redactor.counts == {"email": 3}


def test_redact_record_touches_text_only():
    record = {"id": "bob@example.com", "messages": [{"role": "user", "content": "mail bob@example.com"}],
              "score": 3, "system": "ops: 10.0.0.1"}
    out = redact_record(record, Redactor())
    assert out == {"id": "bob@example.com", "messages": [{"role": "user", "content": "mail [EMAIL]"}],
                   "score": 3, "system": "ops: [IPV4]"}
    assert record["messages"][0]["content"] == "mail bob@example.com"  # a copy, not in place


def test_presidio_missing_is_a_clear_error():
    try:
        import presidio_analyzer  # noqa: F401
    except ImportError:
        with pytest.raises(PIIBackendError, match="pip install presidio-analyzer"):
            Redactor(backend="presidio")
    else:
        pytest.skip("presidio is installed here")


def test_unknown_type_and_backend():
    with pytest.raises(PIIBackendError, match="unknown PII type 'name'"):
        Redactor(types=("name",))
    with pytest.raises(PIIBackendError, match="unknown PII backend"):
        Redactor(backend="regex")
