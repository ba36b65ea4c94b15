import csv
import json

import pytest

from posttrain.data.layouts import load_examples
from posttrain.data.readers import read_records
from posttrain.data.schema import DataError, DataErrors

ROWS = [
    {"messages": [{"role": "user", "content": "Hi, \"you\""}, {"role": "assistant", "content": "Hello,\nfriend"}],
     "tag": "a"},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "tag": "b"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_all_formats(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"jsonl": write_jsonl(tmp_path / "d.jsonl", ROWS)}
    paths["json"] = tmp_path / "d.json"
    paths["json"].write_text(json.dumps(ROWS))
    paths["json_data"] = tmp_path / "wrapped.json"
    paths["json_data"].write_text(json.dumps({"data": ROWS, "version": 2}))
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    paths["csv"] = tmp_path / "d.csv"
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["messages", "tag"])
        writer.writeheader()
        for r in ROWS:
            writer.writerow({"messages": json.dumps(r["messages"]), "tag": r["tag"]})
    paths["saved"] = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(paths["saved"]))
    paths["saved_dict"] = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                          "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(paths["saved_dict"]))
    return paths


def test_every_format_gives_the_same_examples(tmp_path):
    paths = write_all_formats(tmp_path)
    for name in ("jsonl", "json", "json_data", "parquet", "csv", "saved"):
        source = str(paths[name])
        examples = load_examples(source, "sft")
        assert [(e.messages, e.metadata, e.row, e.source) for e in examples] == [
            (r["messages"], {"tag": r["tag"]}, i, source) for i, r in enumerate(ROWS, 1)], name
    test_split = load_examples(str(paths["saved_dict"]), "sft", split="test")
    assert [e.messages for e in test_split] == [r["messages"] for r in ROWS]
    assert len(load_examples(str(paths["saved_dict"]), "sft")) == 1  # split defaults to "train"
    with pytest.raises(DataErrors, match="has no split 'dev' \\(splits: train, test\\)"):
        load_examples(str(paths["saved_dict"]), "sft", split="dev")


def test_jsonl_row_numbers_are_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n\n")
    assert [row for row, _ in read_records(str(path))] == [1, 4]


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json}\n" + json.dumps(ROWS[1]) + "\n[1, 2]\n")
    with pytest.raises(DataError) as e:
        list(read_records(str(path)))
    assert str(e.value).startswith(f"{path}:2: invalid JSON")
    # load_examples reads on and reports every bad line
    with pytest.raises(DataErrors) as e:
        load_examples(str(path), "sft")
    assert [str(x) for x in e.value.errors] == [
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:4: expected a JSON object, got list",
    ]


def test_csv_cells_that_look_like_json_are_parsed_and_other_text_is_kept(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text('prompt,completion,label\n"[INST] hi",ok,true\n"[{""role"": ""user"", ""content"": ""q""}]",'
                    'no,0\n')
    records = list(read_records(str(path)))
    assert records == [(1, {"prompt": "[INST] hi", "completion": "ok", "label": "true"}),
                       (2, {"prompt": [{"role": "user", "content": "q"}], "completion": "no", "label": "0"})]
    labels = [e.label for e in load_examples(str(path), "unpaired")]
    assert labels == [True, False]


def test_missing_file_and_unsupported_type(tmp_path):
    for missing in (str(tmp_path / "nope.jsonl"), "data/train.parquet", "./x"):
        with pytest.raises(DataError) as e:
            list(read_records(missing))
        assert str(e.value) == f"{missing}: no such file or folder"
    with pytest.raises(DataErrors, match="nope.jsonl: no such file or folder"):
        load_examples(str(tmp_path / "nope.jsonl"), "sft")
    txt = tmp_path / "d.txt"
    txt.write_text("hi")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        list(read_records(str(txt)))
    with pytest.raises(DataError, match="not one written by datasets.save_to_disk"):
        list(read_records(str(tmp_path)))


def test_empty_source_and_unknown_kind(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataErrors, match="empty.jsonl: has no rows"):
        load_examples(str(path), "sft")
    with pytest.raises(ValueError, match="unknown data kind 'ppo'"):
        load_examples(str(path), "ppo")


def test_hub_id_offline_is_a_one_line_data_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read the variable at import time, which has already happened
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    source = "nonexistent-org/nonexistent-ds"
    with pytest.raises(DataError) as e:
        list(read_records(source))
    assert type(e.value) is DataError
    message = str(e.value)
    assert message.startswith(f"{source}: could not load dataset '{source}' from the Hugging Face Hub: ")
    assert message.endswith("; pass a local file or folder") and "\n" not in message
    assert e.value.__suppress_context__
    with pytest.raises(DataErrors) as e:
        load_examples(source, "preference")
    assert len(e.value.errors) == 1 and str(e.value) == message


BOM = b"\xef\xbb\xbf"


def test_a_utf8_bom_is_accepted_in_every_text_format(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    (tmp_path / "d.json").write_bytes(BOM + json.dumps(ROWS).encode())
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8-sig") as fh:  # Excel's "CSV UTF-8"
        writer = csv.DictWriter(fh, fieldnames=["messages", "tag"])
        writer.writeheader()
        writer.writerows({"messages": json.dumps(r["messages"]), "tag": r["tag"]} for r in ROWS)
    for name in ("d.jsonl", "d.json", "d.csv"):
        records = [record for _, record in read_records(str(tmp_path / name))]
        assert records == ROWS, name  # the first key is "messages", not "\ufeffmessages"
    assert [e.messages for e in load_examples(str(tmp_path / "d.jsonl"), "sft")] == [r["messages"] for r in ROWS]


def test_a_latin1_file_names_its_line_and_column_not_a_byte_offset(tmp_path):
    good = json.dumps(ROWS[0]).encode()
    bad = '{"messages": [{"role": "user", "content": "café"}]}'.encode("latin-1")
    (tmp_path / "d.jsonl").write_bytes(good + b"\n" + good + b"\n" + bad + b"\n")
    with pytest.raises(DataError) as e:
        list(read_records(str(tmp_path / "d.jsonl")))
    assert str(e.value) == (f"{tmp_path / 'd.jsonl'}:3: not UTF-8 text (byte 0xe9 at column 47); save the file as "
                            "UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    errors = []  # collecting mode: the bad line is reported and the others are still read
    assert len(list(read_records(str(tmp_path / "d.jsonl"), errors=errors))) == 2
    assert [err.row for err in errors] == [3]

    (tmp_path / "d.csv").write_bytes("prompt,chosen\nok,fine\ncafé,x\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.csv: line 3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        list(read_records(str(tmp_path / "d.csv")))
    (tmp_path / "d.json").write_bytes(b'[\n{"a": 1},\n' + '{"a": "é"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.json: line 3: not UTF-8 text \(byte 0xe9 at column 8\)"):
        list(read_records(str(tmp_path / "d.json")))
