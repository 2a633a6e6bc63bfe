"""CPF/CNPJ validation, masking, scrubbing, ids and keys: worked examples and properties."""

from __future__ import annotations

import hashlib
import hmac
import string

import pytest
from hypothesis import given, strategies as st

from klavi_async import (
    deterministic_idempotency_key,
    mask_document,
)
from klavi_async._documents import (
    DocumentCache,
    InvalidInput,
    infer_identifier_type,
    is_valid_cnpj,
    is_valid_cpf,
    normalize_document,
    scrub_documents,
    validate_document,
    validate_idempotency_key,
    validate_payment_id,
)

# Every worked example of reference/openfinance-brasil.md, sections 2 and 3.
VALID_CPFS = ["529.982.247-25", "111.444.777-35", "123.456.789-09", "390.533.447-05"]
VALID_CNPJS = [
    "12.ABC.345/01DE-35",
    "A8.7HB.ZHB/0001-61",
    "AB.CDE.FGH/0001-95",
    "1A.2B3.C4D/5E6F-34",
    "Z9.Y8X.7W6/0001-05",
    "Q2.GRO.WP7/0001-85",
    "11.222.333/0001-81",
    "11.444.777/0001-61",
    "45.723.174/0001-10",
    "06.990.590/0001-23",
]
CPF_REPDIGITS = [str(d) * 11 for d in range(10)]
ALNUM = string.digits + string.ascii_uppercase


# -- an independent implementation, in the equivalent forms the reference gives ---------------
# CPF: validate-docbr's `(s * 10) % 11 % 10`.  CNPJ: weights 2..9 assigned from the right and
# cycling, python-stdnum's `(11 - s % 11) % 11 % 10`, each character worth ASCII code - 48.


def ref_cpf(base: str) -> str:
    """The CPF whose first nine digits are *base*."""
    digits = [int(c) for c in base]
    for _ in range(2):
        total = sum(d * w for d, w in zip(digits, range(len(digits) + 1, 1, -1), strict=True))
        digits.append(total * 10 % 11 % 10)
    return "".join(map(str, digits))


def ref_cnpj_remainder(chars: str) -> int:
    total = sum((ord(c) - 48) * (2 + i % 8) for i, c in enumerate(reversed(chars)))
    return total % 11


def ref_cnpj(base: str) -> str:
    """The CNPJ whose first twelve characters are *base*."""
    dv1 = (11 - ref_cnpj_remainder(base)) % 11 % 10
    dv2 = (11 - ref_cnpj_remainder(base + str(dv1))) % 11 % 10
    return f"{base}{dv1}{dv2}"


def ref_valid_cpf(bare: str) -> bool:
    return bare.isdigit() and len(bare) == 11 and len(set(bare)) > 1 and ref_cpf(bare[:9]) == bare


def ref_valid_cnpj(bare: str) -> bool:
    return (
        len(bare) == 14
        and all(c in ALNUM for c in bare[:12])
        and bare[12:].isdigit()
        and bare[:12] != "0" * 12
        and ref_cnpj(bare[:12]) == bare
    )


def fmt_cpf(bare: str) -> str:
    return f"{bare[:3]}.{bare[3:6]}.{bare[6:9]}-{bare[9:]}"


def fmt_cnpj(bare: str) -> str:
    return f"{bare[:2]}.{bare[2:5]}.{bare[5:8]}/{bare[8:12]}-{bare[12:]}"


def test_the_independent_implementation_reproduces_the_worked_examples() -> None:
    """Guards the test oracle itself: it must agree with every example in the reference."""
    for cpf in VALID_CPFS:
        bare = cpf.replace(".", "").replace("-", "")
        assert ref_cpf(bare[:9]) == bare
    for cnpj in VALID_CNPJS:
        bare = cnpj.replace(".", "").replace("/", "").replace("-", "")
        assert ref_cnpj(bare[:12]) == bare
    assert ref_cnpj_remainder("12ABC34501DE") == 8  # the reference: sum 459, r = 8, DV1 = 3


# -- worked examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("cpf", VALID_CPFS)
def test_reference_cpfs_are_valid(cpf: str) -> None:
    bare = cpf.replace(".", "").replace("-", "")
    assert is_valid_cpf(bare)
    assert not is_valid_cnpj(bare)
    assert validate_document(cpf, None) == (bare, "CPF")
    assert validate_document(bare, "CPF") == (bare, "CPF")
    assert validate_document(cpf, " cpf ") == (bare, "CPF")


@pytest.mark.parametrize("cnpj", VALID_CNPJS)
def test_reference_cnpjs_are_valid(cnpj: str) -> None:
    bare = cnpj.replace(".", "").replace("/", "").replace("-", "")
    assert is_valid_cnpj(bare)
    assert not is_valid_cpf(bare)
    assert validate_document(cnpj, None) == (bare, "CNPJ")
    assert validate_document(cnpj.lower(), "cnpj") == (bare, "CNPJ")
    assert validate_document(bare, "CNPJ") == (bare, "CNPJ")


@pytest.mark.parametrize("document", ["529.982.247-26", "52998224726", "52998224715"])
def test_cpfs_with_wrong_check_digits_are_rejected(document: str) -> None:
    bare = normalize_document(document)
    assert not is_valid_cpf(bare)
    with pytest.raises(InvalidInput, match="not a valid CPF"):
        validate_document(document, None)


@pytest.mark.parametrize("repdigit", CPF_REPDIGITS)
def test_every_cpf_repdigit_is_rejected_though_its_checksum_passes(repdigit: str) -> None:
    """The reference's trap: all ten repdigits pass mod 11, so the rule must be coded."""
    assert ref_cpf(repdigit[:9]) == repdigit  # the checksum alone would accept it
    assert not is_valid_cpf(repdigit)
    with pytest.raises(InvalidInput, match="not a valid CPF"):
        validate_document(repdigit, None)
    with pytest.raises(InvalidInput):
        validate_document(fmt_cpf(repdigit), "CPF")


def test_the_all_zero_cnpj_is_rejected_though_its_checksum_passes() -> None:
    assert ref_cnpj("0" * 12) == "0" * 14
    assert not is_valid_cnpj("0" * 14)
    with pytest.raises(InvalidInput, match="not a valid CNPJ"):
        validate_document("00000000000000", None)
    with pytest.raises(InvalidInput):
        validate_document("00.000.000/0000-00", "CNPJ")


@pytest.mark.parametrize("digit", "123456789")
def test_other_cnpj_repdigits_fail_the_checksum(digit: str) -> None:
    assert not is_valid_cnpj(digit * 14)


def test_lbnxqob5000163_is_invalid_and_its_correct_check_digits_are_41() -> None:
    """brutils PR #731 mapped A=10..Z=35; under the official ASCII-48 rule the DVs are 41."""
    assert not is_valid_cnpj("LBNXQOB5000163")
    with pytest.raises(InvalidInput, match="not a valid CNPJ"):
        validate_document("LBNXQOB5000163", None)
    assert ref_cnpj("LBNXQOB50001") == "LBNXQOB5000141"
    assert is_valid_cnpj("LBNXQOB5000141")
    assert validate_document("lb.nxq.ob5/0001-41", None) == ("LBNXQOB5000141", "CNPJ")


@pytest.mark.parametrize(
    "bare",
    [
        "12ABC34501DE3A",  # a letter where a check digit goes
        "12abc34501de35",  # lower case reaches is_valid_cnpj only through normalisation
        "12ABC34501De35",
        "12ABC34501DE3",  # 13 characters
        "12ABC34501DE355",
        "12ABC34501D\u00c935",  # non-ASCII letter
        "12ABC-4501DE35",
    ],
)
def test_malformed_bare_cnpjs_are_rejected(bare: str) -> None:
    assert not is_valid_cnpj(bare)


@pytest.mark.parametrize(
    "bare", ["5299822472", "529982247255", "5299822472A", "\u0665" * 11, "52998224725 "]
)
def test_malformed_bare_cpfs_are_rejected(bare: str) -> None:
    assert not is_valid_cpf(bare)


# -- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "bare"),
    [
        ("529.982.247-25", "52998224725"),
        (" 529.982.247-25 ", "52998224725"),
        ("529 982 247 25", "52998224725"),
        ("\t529982247\n25\r", "52998224725"),
        ("529-982-247/25", "52998224725"),
        ("12.abc.345/01de-35", "12ABC34501DE35"),
        ("12.AbC.345/01dE-35", "12ABC34501DE35"),
        ("11.222.333/0001-81", "11222333000181"),
        ("", ""),
        (" .-/ ", ""),
    ],
)
def test_normalisation(raw: str, bare: str) -> None:
    assert normalize_document(raw) == bare


@pytest.mark.parametrize(
    "raw",
    [
        "529_982_247_25",
        "529,982,247-25",
        "52998224725!",
        "529982247+25",
        "529\u00a7982",
        "529\u00a0982\u00a0247\u00a025",  # non-breaking spaces are not stripped
        "\u0665\u0662\u0669",  # Arabic-Indic digits
        "12.ABC.345/01D\u00c9-35",  # accented letter
        "stra\u00dfe",  # 'ß' upper-cases to ASCII 'SS'; it must still be rejected
        "\u017f",  # long s, upper-cases to ASCII 'S'
        "\u0131",  # dotless i, upper-cases to ASCII 'I'
        "\ufb01",  # 'fi' ligature, upper-cases to ASCII 'FI'
    ],
)
def test_other_characters_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidInput, match="only digits, letters"):
        normalize_document(raw)
    with pytest.raises(InvalidInput):
        validate_document(raw, None)


# -- identifier type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bare", "expected"),
    [("1" * 11, "CPF"), ("A" * 14, "CNPJ"), ("", None), ("1" * 10, None), ("1" * 12, None)],
)
def test_identifier_type_is_inferred_from_the_length(bare: str, expected: str | None) -> None:
    assert infer_identifier_type(bare) == expected


@pytest.mark.parametrize("document", ["", "1234567890", "123456789012", "1234567890123", "1" * 15])
def test_a_length_that_is_neither_cpf_nor_cnpj_is_rejected(document: str) -> None:
    with pytest.raises(InvalidInput, match=f"got {len(document)} characters"):
        validate_document(document, None)


@pytest.mark.parametrize(
    ("document", "identifier_type", "message"),
    [
        ("529.982.247-25", "CNPJ", "identifier_type is CNPJ but cancelled_by has 11 characters"),
        ("11.222.333/0001-81", "CPF", "identifier_type is CPF but cancelled_by has 14 characters"),
        ("12.ABC.345/01DE-35", "cpf", "identifier_type is CPF but cancelled_by has 14 characters"),
        ("123456789012", "CPF", "identifier_type is CPF but cancelled_by has 12 characters"),
    ],
)
def test_identifier_type_mismatch(document: str, identifier_type: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_document(document, identifier_type)
    assert str(caught.value) == message


@pytest.mark.parametrize("identifier_type", ["RG", "", "  ", "CPFX", "C.P.F", "passport"])
def test_unknown_identifier_types_are_rejected_and_echoed(identifier_type: str) -> None:
    with pytest.raises(InvalidInput, match="identifier_type must be 'CPF' or 'CNPJ'") as caught:
        validate_document("529.982.247-25", identifier_type)
    assert repr(identifier_type) in str(caught.value)


@pytest.mark.parametrize("swapped", ["52998224725", "529.982.247-25", "11222333000181", "x" * 40])
def test_an_identifier_type_that_may_be_a_document_is_not_echoed(swapped: str) -> None:
    """Arguments swapped by mistake: the message shows the length, never the document."""
    with pytest.raises(InvalidInput) as caught:
        validate_document("CPF", swapped)
    message = str(caught.value)
    assert f"<{len(swapped)} chars>" in message
    assert swapped[:6] not in message


# -- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "masked"),
    [
        ("529.982.247-25", "***.982.247-**"),
        ("52998224725", "***.982.247-**"),
        ("123.456.789-09", "***.456.789-**"),
        ("11222333000181", "**.222.333/0001-**"),
        ("11.222.333/0001-81", "**.222.333/0001-**"),
        ("12.345.678/0001-95", "**.345.678/0001-**"),
        ("12.abc.345/01de-35", "**.ABC.345/01DE-**"),
        ("12345", "<5 chars>"),  # a wrong length shows only the length
        ("1234567890123", "<13 chars>"),
        ("", "<0 chars>"),
        ("529#982#247#25", "<14 chars>"),  # characters normalisation rejects: only the length
        ("529\u00a7", "<4 chars>"),
    ],
)
def test_mask_document(document: str, masked: str) -> None:
    assert mask_document(document) == masked


# -- scrubbing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("cancelledBy 52998224725 invalid", "cancelledBy ***.982.247-** invalid"),
        ("cpf=529.982.247-25.", "cpf=***.982.247-**."),
        ("CNPJ 11.222.333/0001-81", "CNPJ **.222.333/0001-**"),
        ("cnpj 11222333000181!", "cnpj **.222.333/0001-**!"),
        ("alnum 12.ABC.345/01DE-35", "alnum **.ABC.345/01DE-**"),
        ("lower 12abc34501de35", "lower **.ABC.345/01DE-**"),
        ("two: 52998224725, 11144477735", "two: ***.982.247-**, ***.444.777-**"),
        ("order 12345678901 and 52998224726", "order 12345678901 and 52998224726"),
        ("no documents here", "no documents here"),
        # Glued to letters (a consent id, `CPF…`): still a document, and masked.
        ("pay-ABC52998224725X", "pay-ABC***.982.247-**X"),
        ("CPF52998224725", "CPF***.982.247-**"),
        ("x52998224725x", "x***.982.247-**x"),
        ("ID11222333000181X", "ID**.222.333/0001-**X"),
        # Inside a longer run of digits: not a document.
        ("1529982247250", "1529982247250"),
        ("", ""),
    ],
)
def test_scrub_documents(text: str, scrubbed: str) -> None:
    assert scrub_documents(text) == scrubbed


def test_scrub_replaces_the_known_document_even_when_the_pattern_misses_it() -> None:
    text = "for 1529982247250 and 52998224725"
    masked = "for 1***.982.247-**0 and ***.982.247-**"
    assert scrub_documents(text) == "for 1529982247250 and ***.982.247-**"  # inside digits
    assert scrub_documents(text, "52998224725") == masked
    assert scrub_documents("for 1529982247250", "") == "for 1529982247250"
    assert scrub_documents("for 1529982247250", None) == "for 1529982247250"


# -- payment ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payment_id",
    ["a", "Z", "0", "pay-1", "7c1e4f2a-0b1d-4e8a-9c3f-2d5e6f7a8b9c", "A" * 100, "a-" * 50, "1--"],
)
def test_valid_payment_ids(payment_id: str) -> None:
    assert validate_payment_id(payment_id) == payment_id


@pytest.mark.parametrize(
    "payment_id",
    [
        "",
        "-pay",
        "pay_1",
        "pay 1",
        " pay",
        "pay\n",
        "p/1",
        "p.1",
        "p%2F1",
        "p\u00e1",
        "\u0661\u0662",  # Arabic-Indic digits
        "A" * 101,
        "a-" * 50 + "b",
    ],
)
def test_invalid_payment_ids(payment_id: str) -> None:
    with pytest.raises(InvalidInput, match="payment_id must be 1-100 letters"):
        validate_payment_id(payment_id)


def test_the_payment_id_boundary_is_100_characters() -> None:
    assert validate_payment_id("x" * 100) == "x" * 100
    with pytest.raises(InvalidInput):
        validate_payment_id("x" * 101)


def test_payment_id_messages_name_the_argument_and_clip_the_value() -> None:
    with pytest.raises(InvalidInput, match=r"^consent_id must") as caught:
        validate_payment_id("_" * 500, "consent_id")
    assert "'" + "_" * 40 + "...'" in str(caught.value)
    assert "_" * 41 not in str(caught.value)


@pytest.mark.parametrize("document", ["529.982.247-25", "11.222.333/0001-81", "12.ABC.345/01DE-35"])
def test_a_document_passed_as_the_payment_id_is_not_echoed(document: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_payment_id(document)
    message = str(caught.value)
    assert document not in message
    assert mask_document(document) in message


# -- idempotency keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "k",
        "a" * 40,
        "my key/1",
        "inner  spaces ok",
        "~!@#$%^&*()",
        "7c1e4f2a-0b1d-4e8a-9c3f-2d5e6f",
    ],
)
def test_valid_idempotency_keys(key: str) -> None:
    assert validate_idempotency_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "a" * 41,
        " k",
        "k ",
        "\tk",
        "chave-\u00e7",  # non-ASCII
        "caf\u00e9",
        "tab\tinside",
        "line\nbreak",
        "del\x7f",
        "nul\x00",
        "\n",
    ],
)
def test_invalid_idempotency_keys(key: str) -> None:
    with pytest.raises(InvalidInput, match="idempotency_key must be 1-40 printable ASCII"):
        validate_idempotency_key(key)


def test_the_idempotency_key_boundary_is_40_characters() -> None:
    assert validate_idempotency_key("k" * 39 + "!") == "k" * 39 + "!"
    with pytest.raises(InvalidInput):
        validate_idempotency_key("k" * 41)


# -- deterministic keys --------------------------------------------------------------------------


def test_deterministic_key_is_stable_and_pinned() -> None:
    """Pinned against a re-derivation: a rerun batch must send the key an older run sent."""
    message = b"klavi-async/cancel/v1\x00pay-1\x0052998224725"
    expected = "kc1-" + hashlib.blake2b(message, digest_size=16).hexdigest()
    assert deterministic_idempotency_key("pay-1", "529.982.247-25") == expected
    keyed = "kc1-" + hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()[:32]
    assert deterministic_idempotency_key("pay-1", "52998224725", secret=b"s3cret") == keyed


def test_deterministic_key_properties() -> None:
    key = deterministic_idempotency_key("pay-1", "529.982.247-25")
    assert key == deterministic_idempotency_key("pay-1", "529.982.247-25")
    assert key == deterministic_idempotency_key("pay-1", "52998224725")
    assert key == deterministic_idempotency_key("pay-1", " 529 982 247 25 ")
    assert len(key) <= 40
    assert validate_idempotency_key(key) == key
    assert "52998224725" not in key
    assert key != deterministic_idempotency_key("pay-2", "52998224725")
    assert key != deterministic_idempotency_key("pay-1", "111.444.777-35")
    keyed = deterministic_idempotency_key("pay-1", "52998224725", secret=b"s3cret")
    assert keyed != key
    assert keyed == deterministic_idempotency_key("pay-1", "529.982.247-25", secret=b"s3cret")
    assert keyed != deterministic_idempotency_key("pay-1", "52998224725", secret=b"other")
    assert validate_idempotency_key(keyed) == keyed


def test_deterministic_key_of_a_cnpj_ignores_case_and_mask() -> None:
    key = deterministic_idempotency_key("pay-1", "12.abc.345/01de-35")
    assert key == deterministic_idempotency_key("pay-1", "12ABC34501DE35")
    assert "12ABC34501DE35" not in key.upper()


@pytest.mark.parametrize(("payment_id", "document"), [("bad id", "52998224725"), ("p", "5#9")])
def test_deterministic_key_rejects_malformed_input(payment_id: str, document: str) -> None:
    with pytest.raises(ValueError, match=r"payment_id|cancelled_by"):
        deterministic_idempotency_key(payment_id, document)


# -- properties ----------------------------------------------------------------------------------

cpf_bases = st.text(alphabet=string.digits, min_size=9, max_size=9).filter(
    lambda base: len(set(base)) > 1
)
numeric_cnpj_bases = st.text(alphabet=string.digits, min_size=12, max_size=12)
alnum_cnpj_bases = st.text(alphabet=ALNUM, min_size=12, max_size=12)
cnpj_bases = st.one_of(numeric_cnpj_bases, alnum_cnpj_bases).filter(lambda b: b != "0" * 12)


@given(cpf_bases)
def test_generated_cpfs_validate_in_every_form(base: str) -> None:
    cpf = ref_cpf(base)
    assert is_valid_cpf(cpf)
    assert validate_document(cpf, None) == (cpf, "CPF")
    assert validate_document(fmt_cpf(cpf), "CPF") == (cpf, "CPF")


@given(cnpj_bases)
def test_generated_cnpjs_validate_in_every_form(base: str) -> None:
    cnpj = ref_cnpj(base)
    assert is_valid_cnpj(cnpj)
    assert validate_document(cnpj, None) == (cnpj, "CNPJ")
    assert validate_document(fmt_cnpj(cnpj).lower(), "CNPJ") == (cnpj, "CNPJ")


# Mod 11 cannot catch every one-character change, and the tests say exactly where it cannot:
# - check digits map remainders 0 and 1 both to 0, so a change moving DV1's remainder between
#   0 and 1 keeps DV1 (and may keep DV2);
# - CNPJ characters whose values differ by a multiple of 11 ('6' and 'A', '0' and 'F', 'A' and
#   'L', ...) weigh the same mod 11, so swapping one for the other keeps both check digits.
# Every other change is rejected, and the validator agrees with the oracle on all of them.


def changes(document: str, alphabet: str) -> list[str]:
    return [
        document[:i] + c + document[i + 1 :]
        for i in range(len(document))
        for c in alphabet
        if c != document[i]
    ]


@given(cpf_bases)
def test_one_character_changes_to_a_cpf_are_rejected_except_mod_11_blind_spots(base: str) -> None:
    cpf = ref_cpf(base)
    r1 = sum(int(c) * w for c, w in zip(cpf, range(10, 1, -1), strict=False)) % 11
    for changed in changes(cpf, string.digits):
        accepted = is_valid_cpf(changed)
        assert accepted == ref_valid_cpf(changed)
        if accepted:
            r1_changed = sum(int(c) * w for c, w in zip(changed, range(10, 1, -1), strict=False))
            assert {r1, r1_changed % 11} == {0, 1}


@given(cnpj_bases)
def test_one_character_changes_to_a_cnpj_are_rejected_except_mod_11_blind_spots(
    base: str,
) -> None:
    cnpj = ref_cnpj(base)
    for i, original in enumerate(cnpj):
        alphabet = ALNUM if i < 12 else string.digits
        for char in ALNUM:
            if char == original:
                continue
            changed = cnpj[:i] + char + cnpj[i + 1 :]
            accepted = is_valid_cnpj(changed)
            assert accepted == ref_valid_cnpj(changed)
            if char not in alphabet:  # a letter where a check digit goes
                assert not accepted
            elif accepted:
                same_weight = (ord(char) - ord(original)) % 11 == 0
                remainders = {ref_cnpj_remainder(cnpj[:12]), ref_cnpj_remainder(changed[:12])}
                assert same_weight or remainders == {0, 1}


def test_almost_every_one_character_change_to_the_examples_is_rejected() -> None:
    tried = rejected = 0
    for document in [*VALID_CPFS, *VALID_CNPJS]:
        bare = normalize_document(document)
        cpf = len(bare) == 11
        for changed in changes(bare, string.digits if cpf else ALNUM):
            if not cpf and not changed[12:].isdigit():
                continue
            tried += 1
            rejected += not (is_valid_cpf(changed) if cpf else is_valid_cnpj(changed))
    assert tried > 4000
    assert rejected / tried > 0.93  # measured: 94 %; the rest are the blind spots above


@given(st.one_of(cpf_bases.map(ref_cpf), cnpj_bases.map(ref_cnpj)))
def test_the_mask_never_holds_the_full_document(bare: str) -> None:
    formatted = fmt_cpf(bare) if len(bare) == 11 else fmt_cnpj(bare)
    for shown in (bare, formatted, formatted.lower()):
        masked = mask_document(shown)
        assert bare not in masked
        assert formatted not in masked
        assert masked.startswith("***." if len(bare) == 11 else "**.")
        assert masked.endswith("-**")
        assert bare not in scrub_documents(f"doc {shown} end")
        assert formatted not in scrub_documents(f"doc {shown} end")


@given(st.text(max_size=40))
def test_normalise_is_idempotent(raw: str) -> None:
    try:
        bare = normalize_document(raw)
    except InvalidInput:
        return
    assert normalize_document(bare) == bare
    assert bare.isascii() and (bare.isalnum() or bare == "")
    assert bare == bare.upper()


def corrupt(document: str, position: int, char: str) -> str:
    position %= len(document)
    return document[:position] + char + document[position + 1 :]


documents = st.one_of(
    cpf_bases.map(ref_cpf),
    cnpj_bases.map(ref_cnpj),
    st.builds(corrupt, cpf_bases.map(ref_cpf), st.integers(0, 10), st.sampled_from(ALNUM)),
    st.builds(corrupt, cnpj_bases.map(ref_cnpj), st.integers(0, 13), st.sampled_from(ALNUM)),
    st.text(alphabet=ALNUM, min_size=11, max_size=11),
    st.text(alphabet=ALNUM, min_size=14, max_size=14),
    st.sampled_from([*CPF_REPDIGITS, "0" * 14, "LBNXQOB5000163"]),
)


@given(
    documents,
    st.sampled_from(["plain", "formatted", "lower"]),
    st.sampled_from([None, "CPF", "CNPJ", "cpf", "RG", "doc"]),
)
def test_no_validation_message_holds_the_bare_document(
    bare: str, form: str, identifier_type: str | None
) -> None:
    shown = {"plain": bare, "formatted": fmt_cpf(bare) if len(bare) == 11 else fmt_cnpj(bare)}
    raw = shown.get(form, bare.lower())
    arguments = [(raw, identifier_type), (identifier_type or "CPF", raw)]  # and swapped
    for cancelled_by, kind in arguments:
        try:
            validate_document(cancelled_by, kind)
        except InvalidInput as exc:
            message = str(exc)
            assert bare not in message.upper()
            assert shown["formatted"] not in message.upper()
            if any(c.isdigit() for c in bare[:9]):  # not a word of the message itself
                assert bare[:9] not in message.upper()


@given(st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=120))
def test_payment_id_validation_matches_the_contract_regex(payment_id: str) -> None:
    valid = payment_id[0] != "-" and len(payment_id) <= 100
    if valid:
        assert validate_payment_id(payment_id) == payment_id
    else:
        with pytest.raises(InvalidInput):
            validate_payment_id(payment_id)


@given(st.text(max_size=45))
def test_idempotency_key_validation_matches_the_contract(key: str) -> None:
    printable = all(" " <= c <= "~" for c in key)
    valid = 1 <= len(key) <= 40 and printable and key == key.strip()
    if valid:
        assert validate_idempotency_key(key) == key
    else:
        with pytest.raises(InvalidInput):
            validate_idempotency_key(key)


@given(st.text(alphabet=ALNUM + "-", min_size=1, max_size=30), cpf_bases.map(ref_cpf))
def test_deterministic_keys_never_show_the_document(payment_id: str, cpf: str) -> None:
    payment_id = "p" + payment_id
    key = deterministic_idempotency_key(payment_id, fmt_cpf(cpf))
    assert key == deterministic_idempotency_key(payment_id, cpf)
    assert len(key) <= 40
    assert cpf not in key
    assert validate_idempotency_key(key) == key


def test_the_document_cache_answers_like_validate_document() -> None:
    cache = DocumentCache(size=2)
    assert cache.validate("529.982.247-25", None) == validate_document("529.982.247-25", None)
    assert cache.validate("529.982.247-25", None) == ("52998224725", "CPF")  # remembered
    assert cache.validate("11.222.333/0001-81", "cnpj") == ("11222333000181", "CNPJ")
    assert len(cache) == 2
    with pytest.raises(InvalidInput):
        cache.validate("529.982.247-26", None)
    with pytest.raises(InvalidInput):  # the same pair, refused with a different type
        cache.validate("529.982.247-25", "CNPJ")
    assert len(cache) == 2  # refusals are not remembered


def test_the_document_cache_is_bounded_and_forgets_the_oldest_first() -> None:
    cache = DocumentCache(size=3)
    for document in ("52998224725", "11144477735", "39053344705", "11222333000181"):
        cache.validate(document, None)
    assert len(cache) == 3
    assert ("52998224725", None) not in cache._entries
    assert ("11222333000181", None) in cache._entries
    assert "529" not in repr(cache)
    assert repr(cache) == "<DocumentCache 3/3>"
    cache.clear()
    assert len(cache) == 0


# Folded in from test_units.py.


@given(st.text(max_size=120))
def test_payment_id_validation_fuzz(text: str) -> None:
    from klavi_async._documents import InvalidInput, validate_payment_id

    try:
        assert validate_payment_id(text) == text
    except InvalidInput as exc:
        assert "payment_id" in str(exc)
    else:
        assert 1 <= len(text) <= 100
        assert text.isascii()
