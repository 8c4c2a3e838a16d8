"""`danling.utils.basex`: base-62 codes and the sortable time strings built on them."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from danling.utils.basex import BASE62_ALPHABET, base62_decode, base62_encode, get_time_str


def test_alphabet_is_62_distinct_characters_in_ascii_order():
    assert len(BASE62_ALPHABET) == 62
    assert list(BASE62_ALPHABET) == sorted(set(BASE62_ALPHABET))


@pytest.mark.parametrize(("number", "code"), [(0, "0"), (9, "9"), (10, "A"), (61, "z"), (62, "10"), (62**2, "100")])
def test_base62_encode_known_values(number, code):
    assert base62_encode(number) == code
    assert base62_decode(code) == number


def test_base62_round_trip_over_random_integers():
    rng = random.Random(0)
    numbers = [rng.randrange(2**bits) for bits in (8, 32, 64, 128, 256) for _ in range(200)]
    for number in numbers:
        code = base62_encode(number)
        assert set(code) <= set(BASE62_ALPHABET)
        assert base62_decode(code) == number


def test_base62_codes_of_equal_length_sort_like_their_numbers():
    rng = random.Random(1)
    numbers = sorted(rng.randrange(62**5, 62**6) for _ in range(500))
    codes = [base62_encode(number) for number in numbers]
    assert all(len(code) == 6 for code in codes)
    assert codes == sorted(codes)


def test_base62_encode_rejects_negative_numbers():
    with pytest.raises(ValueError, match="-5"):
        base62_encode(-5)


@pytest.mark.parametrize(("code", "char"), [("ab-c", "'-'"), ("12 3", "' '"), ("é", "'é'")])
def test_base62_decode_of_an_invalid_character_raises_naming_it(code, char):
    with pytest.raises(ValueError, match=char):
        base62_decode(code)


def test_get_time_str_is_ordered_like_increasing_datetimes():
    rng = random.Random(2)
    start, end = datetime(2002, 1, 1), datetime(2083, 12, 31, 23, 59, 59, 999999)
    span = int((end - start).total_seconds() * 1e6)
    times = sorted(start + timedelta(microseconds=rng.randrange(span)) for _ in range(1000))
    times += [end]
    codes = [get_time_str(time) for time in times]
    assert codes == sorted(codes)
    assert len(set(codes)) == len(set(times))


def test_get_time_str_separates_adjacent_microseconds():
    time = datetime(2026, 5, 17, 12, 30, 59, 999999)
    later = time + timedelta(microseconds=1)
    assert get_time_str(time) < get_time_str(later)


def test_get_time_str_encodes_the_digits_of_the_time():
    time = datetime(2026, 1, 2, 3, 4, 5, 6)
    assert base62_decode(get_time_str(time)) == 260102030405000006


def test_get_time_str_defaults_to_now():
    before = get_time_str(datetime.now())
    now = get_time_str()
    after = get_time_str(datetime.now())
    assert before <= now <= after
