import hashlib

import pytest

from p2pnet.core.model_id import model_id_from_digest, model_id_of_bytes, parse_model_id
from p2pnet.errors import InvalidModelIdError

HELLO_ID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def test_golden_cid_of_hello() -> None:
    # CIDv1 raw sha2-256 of b"hello", as `ipfs add --cid-version 1 --raw-leaves` prints it.
    assert model_id_of_bytes(b"hello") == HELLO_ID
    assert model_id_from_digest(hashlib.sha256(b"hello").digest()) == HELLO_ID


def test_parse_accepts_and_canonicalizes() -> None:
    assert parse_model_id(f"  {HELLO_ID}\n") == HELLO_ID
    upper_base32 = "B" + HELLO_ID[1:].upper()  # the same CID in base32upper
    assert parse_model_id(upper_base32) == HELLO_ID


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "not a model ID"),
        ("bafkreixyz", "not a model ID"),
        ("QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB", "CIDv0 dag-pb"),
        ("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "CIDv1 dag-pb"),
    ],
)
def test_parse_rejects_what_is_not_a_model_id(text: str, message: str) -> None:
    with pytest.raises(InvalidModelIdError, match=message):
        parse_model_id(text)


def test_a_long_text_is_refused_before_parsing_and_not_echoed_whole() -> None:
    text = "z" + "1" * 299_999  # base58: parsing it would take seconds
    with pytest.raises(InvalidModelIdError, match="300000 characters") as caught:
        parse_model_id(text)
    assert len(str(caught.value)) < 200
