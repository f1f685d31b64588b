"""The Parquet ExampleGen executor keeps zeros, types and missing values intact."""
import pyarrow as pa
import tensorflow as tf

from components.parquet_example_gen import _encode_table, to_list_columns


def test_encodes_scalars_lists_zeros_and_nulls():
    table = pa.table({
        "user_id": pa.array(["u1", "u2", None]),
        "rating": pa.array([0.0, 4.5, 1.0], pa.float32()),
        "timestamp": pa.array([0, 10, None], pa.int64()),
        "item_genres": pa.array([["Drama", "Comedy"], [], None], pa.list_(pa.string())),
    })
    examples = [tf.train.Example.FromString(b) for b in _encode_table(table)]
    f0, f1, f2 = (e.features.feature for e in examples)
    assert f0["user_id"].bytes_list.value == [b"u1"]
    assert f0["rating"].float_list.value == [0.0]  # the stock executor would drop a 0
    assert f0["timestamp"].int64_list.value == [0]
    assert f0["item_genres"].bytes_list.value == [b"Drama", b"Comedy"]
    assert f1["item_genres"].bytes_list.value == []
    assert f1["rating"].float_list.value == [4.5]
    # Nulls become features without a value, which TFDV and TF read as missing.
    assert f2["user_id"].WhichOneof("kind") is None
    assert f2["timestamp"].WhichOneof("kind") is None


def test_to_list_columns_types():
    batch = pa.RecordBatch.from_pydict({"a": pa.array([1, 2], pa.int32()),
                                        "b": pa.array(["x", "y"])})
    out = to_list_columns(batch)
    assert out.schema.field("a").type == pa.list_(pa.int64())
    assert out.schema.field("b").type == pa.list_(pa.binary())
