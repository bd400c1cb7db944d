"""Plate formats as data: country files, their validation, format rules and format-aware decoding."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edge.formats import COUNTRIES_DIR, DEFAULT_MAX_COST, FormatError, FormatSet, load_countries, read_confidence
from edge.plates import BLANK, READER_CLASSES, normalize


def _columns(pattern: str, p: float = 0.9, alt: dict[int, dict[str, float]] | None = None) -> np.ndarray:
    """Reader columns spelling ``pattern`` (``_`` blank, one blank column between characters); ``alt`` gives a
    character's column other probabilities."""
    seq = "_" + "_".join(pattern) + "_"
    probs = np.full((len(seq), len(READER_CLASSES)), 1e-4, np.float32)
    k = 0
    for t, c in enumerate(seq):
        probs[t, READER_CLASSES.index(c)] = p if c != "_" else 0.99
        if c != "_":
            for other, q in (alt or {}).get(k, {}).items():
                probs[t, READER_CLASSES.index(other)] = q
            k += 1
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world() -> FormatSet:
    return FormatSet.load(COUNTRIES_DIR)


def test_shipped_country_files_cover_the_largest_latin_fleets() -> None:
    codes = {c.code for c in load_countries(COUNTRIES_DIR)}
    eu = {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU",
          "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}
    others = {"GB", "CH", "NO", "TR", "RU", "UA", "US", "CA", "MX", "BR", "AR", "IN", "ID", "AU", "ZA"}
    assert eu | others <= codes and len(codes) >= 30


@pytest.mark.parametrize("text, fmt, shown", [
    ("AB12CDE", "gb_current", "AB12 CDE"),
    ("ZG1234AB", "hr", "ZG 1234-AB"),
    ("IEP1025", "gr", "IEP-1025"),
    ("ABC1D23", "br_mercosur", "ABC1D23"),
])
def test_formats_match_and_display(world: FormatSet, text: str, fmt: str, shown: str) -> None:
    assert world.by_name[fmt].regex.match(text)
    assert world.display(text, fmt) == shown


def test_normalize_keeps_only_contract_characters() -> None:
    assert normalize(" ab-12 cde\n") == "AB12CDE"


def test_a_read_that_fits_is_kept(world: FormatSet) -> None:
    read = world.decode(_columns("AB12CDE"), READER_CLASSES, BLANK)
    assert read.text == "AB12CDE" and read.format is not None and read.cost == 0.0


def test_a_lookalike_the_reader_half_saw_is_fixed_by_position() -> None:
    # Brazil's Mercosur: LLL D L DD. The reader saw I at position 6 but also gave 1 a fair chance.
    br = FormatSet([{"code": "BR", "name": "Brazil", "weight": 1, "classes": {},
                     "formats": [{"name": "br_grey", "groups": ["LLL", "DDDD"], "separators": ["-"]}]}])
    read = br.decode(_columns("NYL36I4", alt={5: {"1": 0.35}}), READER_CLASSES, BLANK)
    assert (read.text, read.format, read.country) == ("NYL3614", "br_grey", "BR")
    assert read.display == "NYL-3614" and 0 < read.cost < 2


def test_a_sure_read_is_never_forced_into_a_format() -> None:
    br = FormatSet([{"code": "BR", "name": "Brazil", "weight": 1, "classes": {},
                     "formats": [{"name": "br_grey", "groups": ["LLL", "DDDD"], "separators": ["-"]}]}])
    read = br.decode(_columns("NYL36I4", p=0.99), READER_CLASSES, BLANK)  # a vanity plate, read surely
    assert (read.text, read.format) == ("NYL36I4", None)


def _one_format(groups: list[str]) -> FormatSet:
    return FormatSet([{"code": "XX", "name": "Test", "weight": 1, "classes": {},
                       "formats": [{"name": "xx", "groups": groups, "separators": [" "] * (len(groups) - 1)}]}])


def test_a_mark_read_weakly_as_a_character_is_dropped_to_fit() -> None:
    # The band's code before ZG162LC half read as B: the column is nearly as much blank as B.
    cols = _columns("BZG162LC")
    cols[1, READER_CLASSES.index(BLANK)] = cols[1, READER_CLASSES.index("B")] * 0.6
    cols /= cols.sum(axis=1, keepdims=True)
    read = _one_format(["LL", "DDD", "LL"]).decode(cols, READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("ZG162LC", "xx") and 0 < read.cost < 2
    # The blank the decoder chose counts in the confidence: below that of the characters alone.
    assert read.confidence < read_confidence(read.char_probs)


def test_a_sure_extra_character_is_never_dropped() -> None:
    read = _one_format(["LL", "DDD", "LL"]).decode(_columns("BZG162LC", p=0.99), READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("BZG162LC", None)


def test_a_narrow_character_the_greedy_read_missed_is_put_back_to_fit() -> None:
    # Greek MIE3047 read as ME3047: the blank column between M and E gave I a fair chance.
    cols = _columns("ME3047")
    cols[2, READER_CLASSES.index("I")] = cols[2, READER_CLASSES.index(BLANK)] * 0.5
    cols /= cols.sum(axis=1, keepdims=True)
    read = _one_format(["LLL", "DDDD"]).decode(cols, READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("MIE3047", "xx") and 0 < read.cost < 2
    # A sure blank there: nothing is invented.
    assert _one_format(["LLL", "DDDD"]).decode(_columns("ME3047"), READER_CLASSES, BLANK).text == "ME3047"


def test_letters_a_country_leaves_out_are_decided_by_the_format() -> None:
    # A class without O: the round glyph in a letter position that excludes O is not kept as O.
    fs = FormatSet([{"code": "XX", "name": "Test", "weight": 1, "classes": {"S": "ABCDEFGHJKLMNPRSTUVWXYZ"},
                     "formats": [{"name": "xx", "groups": ["DDD", "SSS"], "separators": [" "]}]}])
    read = fs.decode(_columns("123ODE", alt={3: {"D": 0.3}}), READER_CLASSES, BLANK)
    assert read.text == "123DDE" and read.format == "xx"


def test_one_confidence_is_the_geometric_mean_of_the_characters() -> None:
    assert read_confidence((0.9, 0.9, 0.9)) == pytest.approx(0.9)
    assert read_confidence((1.0, 0.25)) == pytest.approx(0.5)
    assert read_confidence(()) == 0.0


def test_metadata_round_trip_checks_its_hash(world: FormatSet) -> None:
    meta = world.to_meta()
    again = FormatSet.from_meta(meta, "reader.json")
    assert again.country_codes == world.country_codes
    meta["countries"][0]["name"] = "tampered"
    with pytest.raises(FormatError, match=r"reader\.json: formats\.sha256"):
        FormatSet.from_meta(meta, "reader.json")


def _greek_and_german() -> FormatSet:
    """A narrow format (Greek-like: three letters of a short list, four digits) and a broad one that also takes
    its texts with the first letter lost (German-like)."""
    return FormatSet([
        {"code": "GR", "name": "Greece", "weight": 1, "classes": {"G": "ABEHIKMNOPTXYZ"},
         "formats": [{"name": "gr", "groups": ["GGG", "DDDD"], "separators": ["-"]}]},
        {"code": "DE", "name": "Germany", "weight": 1, "classes": {},
         "formats": [{"name": "de", "groups": ["L{1,3}", "L{1,2}", "D{1,4}"], "separators": [" ", " "]}]},
    ], "test")


def test_a_prior_learnt_from_plates_goes_to_the_formats_that_account_for_them() -> None:
    fs = _greek_and_german()
    # Every Greek text fits both formats; the narrow one explains it better, so it takes the share.
    prior = fs.learn_prior(["IEB-2949", "mib5482", "YHK 9499", "ZZY4008", "KAB1234", "NITESKY"], "labels.tsv")
    assert prior.plates == 6 and prior.source == "labels.tsv"
    assert prior.shares["gr"] > 0.6 and prior.shares["de"] < 0.05
    assert 0.1 < prior.none < 0.3  # the one plate that fits neither
    assert sum(prior.shares.values()) + prior.none == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="no plate texts"):
        fs.learn_prior(["", " - "])


def test_under_a_prior_a_lost_letter_is_put_back_rather_than_a_rare_format_fitted() -> None:
    # IEB2949 with I's column half blank: the greedy read EB2949 fits the broad format exactly.
    cols = _columns("EB2949")
    cols[0, READER_CLASSES.index("I")] = cols[0, READER_CLASSES.index(BLANK)] * 0.4
    cols /= cols.sum(axis=1, keepdims=True)
    fs = _greek_and_german()
    plain = fs.decode(cols, READER_CLASSES, BLANK)
    assert (plain.text, plain.format) == ("EB2949", "de")
    local = fs.with_prior(fs.learn_prior(["IEB2949", "MIB5482", "YHK9499", "ZZY4008"]))
    read = local.decode(cols, READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("IEB2949", "gr") and 0 < read.cost < 2
    # A sure read of a format the camera never saw stays as it was read: the prior bends no read into a shape.
    sure = local.decode(_columns("AB1234", p=0.99), READER_CLASSES, BLANK)
    assert sure.text == "AB1234"
    # A text both formats take is matched to the cheaper one, whatever the order of the country files.
    de_first = FormatSet(list(reversed(fs.countries)))
    assert de_first.match("KAB1234").name == "de"
    assert de_first.with_prior(local.prior).match("KAB1234").name == "gr"


def test_a_prior_learns_a_formats_lengths_and_gives_a_truncation_no_credit() -> None:
    # A Malaysian-like format allows 2 to 7 characters; at this camera its plates are all 7 long.
    fs = FormatSet([{"code": "MY", "name": "Malaysia", "weight": 1, "classes": {},
                     "formats": [{"name": "my", "groups": ["L{1,3}", "D{1,4}"], "separators": [" "]}]}])
    local = fs.with_prior(fs.learn_prior(["ANW2529", "CWM3083", "BFN8484", "ASV9218", "VAL4421"]))
    assert local.prior is not None and local.prior.lengths["my"][7] > 0.9
    assert sum(local.prior.lengths["my"].values()) == pytest.approx(1.0, abs=1e-4)
    assert local.cost("my", 7) == 0.0 and local.cost("my", 5) > 2
    # Two characters lost: without the prior the read takes the format's credit, with it the read stays bare.
    assert fs.decode(_columns("ANW22", p=0.99), READER_CLASSES, BLANK).format == "my"
    bare = local.decode(_columns("ANW22", p=0.99), READER_CLASSES, BLANK)
    assert (bare.text, bare.format) == ("ANW22", None)
    assert local.decode(_columns("ANW2529", p=0.99), READER_CLASSES, BLANK).format == "my"
    # A text is also described by a format at a length the camera's plates have, where another fits it.
    both = FormatSet([*fs.countries, {"code": "XX", "name": "Xland", "weight": 1, "classes": {},
                                      "formats": [{"name": "xx", "groups": ["LLL", "DD"], "separators": [" "]}]}])
    assert both.match("ANW22").name == "my"
    learnt = both.with_prior(both.learn_prior(["ANW2529", "CWM3083", "BFN8484", "ASV9218", "VAL4421", "ABC12"]))
    assert learnt.match("ANW22").name == "xx" and learnt.match("ANW2529").name == "my"


def test_a_prior_travels_in_the_metadata_and_names_only_known_formats() -> None:
    fs = _greek_and_german()
    local = fs.with_prior(fs.learn_prior(["IEB2949", "MIB5482"], "half A"))
    meta = local.to_meta()
    assert meta["sha256"] == fs.to_meta()["sha256"] and "prior" not in fs.to_meta()
    again = FormatSet.from_meta(json.loads(json.dumps(meta)), "reader.json")  # as reader.json holds it
    assert again.prior == local.prior and again.penalty == local.penalty and again.penalty["gr"] == 0.0
    assert again.prior is not None and again.prior.lengths["gr"] == {7: 1.0}
    meta["prior"]["shares"]["xx_gone"] = 0.5
    with pytest.raises(FormatError, match=r"reader\.json: formats\.prior names formats .*xx_gone"):
        FormatSet.from_meta(meta, "reader.json")
    del meta["prior"]["shares"]["xx_gone"]
    meta["prior"]["shares"]["gr"] = 1.5
    with pytest.raises(FormatError, match=r"reader\.json: formats\.prior: shares"):
        FormatSet.from_meta(meta, "reader.json")
    meta["prior"]["shares"]["gr"] = 0.5
    meta["prior"]["lengths"]["gr"] = {0: 1.0}
    with pytest.raises(FormatError, match=r"reader\.json: formats\.prior: lengths"):
        FormatSet.from_meta(meta, "reader.json")


def test_formats_added_to_a_set_with_a_prior_cost_nothing() -> None:
    fs = _greek_and_german()
    local = fs.with_prior(fs.learn_prior(["IEB2949", "MIB5482", "YHK9499"]))
    assert local.penalty["de"] > 2
    extra = _one_format(["LL", "DDD", "LL"])
    merged = local.merged(extra)
    assert merged.prior is not None and "xx" not in merged.penalty and merged.penalty["de"] == local.penalty["de"]
    read = merged.decode(_columns("ZG162LC", alt={2: {"1": 0.05}}), READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("ZG162LC", "xx") and read.cost == 0.0


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


COUNTRY_ZZ = """
code: ZZ
name: Zedland
weight: 5
classes:
  K: ABCDEFGHJKLMNPRSTUVWXYZ
style:
  size_mm: [400, 100]
  colours: [{background: "#FFD200", ink: "#000000"}]
  typeface: generic
  band: {kind: side, codes: [ZZ], share: 1.0}
formats:
  - name: zz
    note: "test country: two letters, a dot, three digits, one letter"
    groups: [KK, NDD, K]
    separators: [".", " "]
    gaps: [dot, gap]
"""


def test_a_country_added_from_a_folder_outside_the_package(tmp_path: Path) -> None:
    from trainer.synth.render import render_plate
    from trainer.synth.text import catalogue, random_text, use_countries

    folder = tmp_path / "my-countries"
    _write(folder, "zz.yaml", COUNTRY_ZZ)
    fs = FormatSet.load(COUNTRIES_DIR).merged(FormatSet.load(folder))
    assert "ZZ" in fs.country_codes
    try:
        use_countries(COUNTRIES_DIR, folder)
        rng = np.random.default_rng(0)
        text, name = random_text(rng, "zz")
        assert name == "zz" and catalogue().entry("zz").rule.regex.match(text)
        plate, rows = render_plate(rng, text, "zz", width_px=200)
        assert 48 <= plate.shape[0] <= 52 and plate.shape[1:] == (200, 4) and rows == 1  # 400x100 mm, +-4 %
        # Its format decodes reads: an O where Zedland's letters leave O out becomes the letter the reader also
        # saw (with Zedland's file alone: other countries' formats may fit the misread exactly).
        misread = text[:1] + "O" + text[2:]
        read = FormatSet.load(folder).decode(_columns(misread, alt={1: {text[1]: 0.3}}), READER_CLASSES, BLANK)
        assert read.text == text and read.country == "ZZ" and read.display == f"{text[:2]}.{text[2:5]} {text[5]}"
    finally:
        use_countries(COUNTRIES_DIR)


COUNTRY_ZY = """
code: ZY
name: Zyland
weight: 5
lists:
  district: [BA, KE, "NO", B1]
formats:
  - name: zy
    note: "test country: a district of the list, three digits, two letters"
    groups: [{pattern: LL, pick: district}, DDDLL]
  - name: zy_moto
    note: "test country: most motorcycles carry a district of the list"
    groups: [{pattern: LL, pick: district, pick_share: 0.8}, DDDL]
"""
COUNTRY_ZX = """
code: ZX
name: Zxland
weight: 5
classes:
  S: ABCDEFGHIJKLMNPRSTUVZ
formats:
  - name: zx
    note: "test country: two letters, three digits, letters without O, Q, W, X, Y"
    groups: [LL, DDD, "S{1,2}"]
"""


def test_a_group_every_plate_draws_from_a_list_takes_its_words_only(tmp_path: Path) -> None:
    _write(tmp_path, "zy.yaml", COUNTRY_ZY)
    _write(tmp_path, "zx.yaml", COUNTRY_ZX)
    fs = FormatSet.load(tmp_path)
    zy, moto = fs.by_name["zy"], fs.by_name["zy_moto"]
    # Its words that fit the group's pattern (B1 does not fit LL); a list only some plates draw from
    # (pick_share below 1) leaves the group's pattern as it is.
    assert zy.regex.match("KE123AB") and zy.regex.match("NO123AB") and not zy.regex.match("ZG123AB")
    assert moto.regex.match("ZG123A")
    zy_part = next(c for c in fs.countries if c["code"] == "ZY")["formats"][0]
    assert zy_part["groups"][0] == "[B][A]|[K][E]|[N][O]"
    # A W where the other country's letters leave W out: with the district list, no format takes ZG662PW as
    # it was read, and the letter the reader also saw makes it a plate of the country whose format fits.
    read = fs.decode(_columns("ZG662PW", alt={6: {"V": 0.3}}), READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("ZG662PV", "zx")
    assert fs.decode(_columns("KE662PW"), READER_CLASSES, BLANK).format == "zy"
    # The prior counts such plates for the country whose format takes them.
    prior = fs.learn_prior(["ZG662PV", "ZG123AB", "ST401KA", "KE100AA"])
    assert prior.shares["zx"] > prior.shares["zy"]


def test_a_text_near_a_format_is_one_edit_from_a_text_it_takes(world: FormatSet) -> None:
    gr, my = world.by_name["gr"], world.by_name["my"]
    # As read, one character misread, one cut off at a frame's edge, one letter too many; two edits are not near.
    assert gr.fits_near("YKH3333") and gr.fits_near("YKH3B33") and gr.fits_near("KMA904") and gr.fits_near("IKMA9045")
    assert not gr.fits_near("MEGANE") and not gr.fits_near("KM904")
    # With the lengths a camera's plates of the format have, a broad format's short texts are not its plates.
    assert my.fits_near("C13") and not my.fits_near("C13", lengths={6, 7}) and my.fits_near("WXY123", lengths={7})


def test_a_list_none_of_whose_words_fits_its_group_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "zy.yaml", COUNTRY_ZY.replace('[BA, KE, "NO", B1]', "[B1, K2]"))
    with pytest.raises(FormatError, match=r"zy.yaml: .*formats\[0\] \(zy\).groups\[0\]: pick 'district': no word "
                                          r"of the list fits the pattern 'LL'"):
        load_countries(tmp_path)


@pytest.mark.parametrize("body, message", [
    (COUNTRY_ZZ.replace("weight: 5", "weight: -1"), r"zz.yaml: weight: Input should be greater than or equal to 0"),
    (COUNTRY_ZZ.replace("groups: [KK, NDD, K]", "groups: [KK, NDQ, K]"),
     r"zz.yaml: .*formats\[0\] \(zz\).groups\[1\]: pattern 'NDQ': class 'Q' is not defined"),
    (COUNTRY_ZZ.replace("typeface: generic", "typeface: generic\n  colour: red"), r"zz.yaml: style.colour: Extra"),
    (COUNTRY_ZZ.replace("code: ZZ", "code: ZY"), r"zz.yaml: code: ZY does not match the file name"),
    (COUNTRY_ZZ.replace('separators: [".", " "]', 'separators: ["."]'), r"zz.yaml: formats.0: .*separators: 1 given"),
])
def test_validation_errors_name_the_file_and_the_key(tmp_path: Path, body: str, message: str) -> None:
    _write(tmp_path, "zz.yaml", body)
    with pytest.raises(FormatError, match=message):
        load_countries(tmp_path)


@pytest.mark.parametrize("body, message", [
    ("code: ZZ\nname: &n Zedland\nweight: 1\nformats: []\nnote: *n\n", "YAML aliases (*n) are not accepted"),
    ("code: ZZ\nname: Zedland\nname: Zed\n", "name: duplicate key at line 3 (first at line 2)"),
])
def test_a_country_file_is_read_as_safely_as_a_configuration(tmp_path: Path, body: str, message: str) -> None:
    # A country folder is user input too (the daemon's detection.countries): no alias is expanded, no key repeats.
    (tmp_path / "zz.yaml").write_text(body)
    with pytest.raises(FormatError, match=re.escape(message)) as err:
        load_countries(tmp_path)
    assert "zz.yaml" in str(err.value)


def _home_and_narrow() -> FormatSet:
    # A home country's ABC-1234 plates: most also fit a narrower foreign format, which takes no ABC-0123.
    return FormatSet([
        {"code": "HL", "name": "Home", "weight": 1, "classes": {},
         "formats": [{"name": "home_a", "groups": ["LLL", "DDDD"], "separators": ["-"]},
                     {"name": "home_b", "groups": ["N", "LLL", "DDD"], "separators": ["", " "]},
                     {"name": "home_c", "groups": ["LL", "DDDDD"], "separators": [" "]}]},
        {"code": "NL", "name": "Narrow", "weight": 1, "classes": {"P": "ABCDEFGHIJKLM"},
         "formats": [{"name": "narrow", "groups": ["PLL", "ND{3}"], "separators": [" "]}]},
        {"code": "XX", "name": "Xland", "weight": 1, "classes": {},
         "formats": [{"name": "xx", "groups": ["LL", "DDDDD"], "separators": [" "]}]}], "test")


def test_a_prior_keeps_the_camera_countrys_formats_where_a_narrower_foreign_one_takes_most_of_their_plates() -> None:
    fs = _home_and_narrow()
    texts = ["1ABC234", "2XYZ345", "3KLM456", "4PQR567", "5STU678", "6VWX789", "ABC1234", "BCD2345", "CDE3456",
             "DEF4567"]
    local = fs.with_prior(fs.learn_prior(texts))
    assert local.prior is not None
    shares = local.prior.shares
    # The four ABC1234 texts fit both; the country that accounts for the camera's other plates keeps a part of them.
    assert shares["home_a"] > 0.1
    fmt = local.match("ABC0123")
    assert fmt is not None and fmt.name == "home_a" and local.cost("home_a", 7) < DEFAULT_MAX_COST
    read = local.decode(_columns("ABC0123", p=0.99), READER_CLASSES, BLANK)
    assert (read.text, read.format) == ("ABC0123", "home_a")
    # A format of the camera's country that no label holds keeps more than one of a country the camera never sees.
    assert shares["home_c"] > 3 * shares["xx"]
    assert sum(shares.values()) + local.prior.none == pytest.approx(1.0, abs=1e-4)
