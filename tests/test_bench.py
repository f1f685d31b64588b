"""The benchmark scripts' building blocks (the benchmarks themselves are not run in CI)."""
import json
import os
import warnings

import pytest

from bench import common


def test_ingest_transform_pipeline_is_the_pipelines_own_components(tmp_path):
    from tfx.dsl.compiler import compiler
    from bench.scale import PIPELINE_STAGES, ingest_transform_pipeline
    pipe, _ = ingest_transform_pipeline(str(tmp_path / "root"), str(tmp_path / "data"),
                                        ["--direct_num_workers=1"])
    assert [c.id for c in pipe.components] == list(PIPELINE_STAGES)
    # It compiles: no edge left to a component outside the sub-pipeline. And TFX knows
    # its components (it warned "not found from the registry" for each one that a
    # first, whole Pipeline had owned).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = compiler.Compiler().compile(pipe)
    assert not [w for w in caught if "not found from the registry" in str(w.message)]
    assert {n.pipeline_node.node_info.id for n in compiled.nodes} == set(PIPELINE_STAGES)
    only_gen, _ = ingest_transform_pipeline(str(tmp_path / "r2"), str(tmp_path / "data"),
                                            [], ("FileBasedExampleGen",))
    compiler.Compiler().compile(only_gen)



def test_sub_pipeline_names_an_unknown_component(tmp_path):
    import pipeline
    cfg = pipeline.PipelineConfig(pipeline_root=str(tmp_path), data_root=str(tmp_path))
    with pytest.raises(ValueError, match="no component Transfrom in the pipeline"):
        pipeline.create_sub_pipeline(cfg, ("FileBasedExampleGen", "Transfrom"))

def test_stage_timer_records_time_memory_and_extras(tmp_path):
    timer = common.StageTimer(heartbeat=0)
    try:
        with timer.stage("work") as extra:
            block = bytearray(50 << 20)  # noqa: F841  (50 MB held during the stage)
            extra["rows"] = 7
    finally:
        timer.close()
    result = timer.as_dict()["work"]
    assert result["rows"] == 7 and result["seconds"] >= 0 and result["peak_mb"] > 50
    path = common.write_json(str(tmp_path / "out" / "x.json"), {"stages": timer.as_dict()})
    with open(path) as f:
        assert json.load(f)["stages"]["work"]["rows"] == 7
    assert not os.path.exists(path + ".tmp")


def test_table_aligns_and_formats():
    text = common.table([["two-tower", 0.11904, 1234567, None], ["ease", 0.2, 12.345, "x"]],
                        ["method", "recall@10", "rows", "note"])
    lines = text.splitlines()
    assert lines[0].split() == ["method", "recall@10", "rows", "note"]
    assert set(lines[1]) <= {"-", " "}
    assert "0.1190" in lines[2] and "1,234,567" in lines[2]
    assert "12.3" in lines[3] and len({len(line.rstrip()) for line in lines[:2]}) == 1


def test_machine_facts():
    facts = common.machine()
    assert facts["cpus"] >= 1 and len(facts["load_average_1_5_15"]) == 3


def test_batch_cost_calls_the_signature_with_b_users_and_reports_per_user_figures():
    import tensorflow as tf
    from bench.serving_batch_cost import time_batches
    seen = []

    def signature(user_id):
        seen.append(int(user_id.shape[0]))
        return {"item_ids": tf.fill([user_id.shape[0], 3], "i"),
                "scores": tf.zeros([user_id.shape[0], 3])}

    out = time_batches(signature, ["u0", "u1", "u2"], [1, 4], seconds=0.01)
    assert set(seen) == {1, 4} and seen.count(4) >= 3
    four = out["4"]
    assert four["calls"] >= 3
    assert abs(four["ms_per_user"] - four["median_ms"] / 4) < 1e-9
    assert abs(four["users_per_s"] - 4000 / four["median_ms"]) < 1e-6


def test_synthetic_catalog_is_a_served_model_from_the_export_code(tmp_path):
    import tensorflow as tf
    from bench.serving_latency import recall_against_exact
    from bench.synthetic_catalog import build_synthetic
    from serving.savedmodel.export import read_index_report
    path = build_synthetic(3000, str(tmp_path), index="float", num_users=50,
                           recall_users=10)
    assert build_synthetic(3000, str(tmp_path)) == path  # built once
    assert read_index_report(path)["kind"] == "brute_force"
    model = tf.saved_model.load(path)
    out = model.signatures["serving_default"](user_id=tf.constant(["u3", "nobody"]))
    assert out["item_ids"].shape == (2, 100)
    # Brute force: serving_default is recommend_exact.
    assert recall_against_exact(model, ["u1", "u2", "u3"])["recall@100"] == 1.0


def test_timeline_table_pairs_warm_and_full_by_seed_and_step(tmp_path):
    from bench.timeline_table import comparison, load, step_table

    def run(mode, step, trainer, r50):
        return {"mode": mode, "step": step, "trainer_seconds": trainer, "seconds": 10 * trainer,
                "pushed": True, "next_window": {"recall@10": 0.1, "recall@50": r50,
                                                "ndcg@10": 0.2}}
    paths = []
    for seed, (warm_r50, full_r50) in {42: (0.33, 0.30), 43: (0.27, 0.30)}.items():
        for mode, r50, trainer in (("warm", warm_r50, 20.0), ("full", full_r50, 100.0)):
            path = tmp_path / f"{seed}-{mode}.json"
            path.write_text(json.dumps({"seed": seed, "steps": [
                run(mode, 1, 200.0, 0.2), run(mode, 2, trainer, r50),
                {**run(mode, 2, 1.0, 0.0), "rerun": True}]}))
            paths.append(str(path))
    runs = load(paths)
    assert len(runs) == 8  # 2 seeds x 2 modes x 2 steps; the rerun left out
    assert "| 43 | 2 | 20.0 / 100.0 | 200 / 1000 |" in step_table(runs)
    _, [two] = comparison(runs)
    assert two["step"] == 2 and two["trainer_ratios"] == [0.2, 0.2]
    assert two["recall50_relative"] == pytest.approx([0.1, -0.1])
    assert two["mean_recall50_relative"] == pytest.approx(0.0)
    assert two["full_spread"] == pytest.approx(0.0)
