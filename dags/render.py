"""Rendering: ray-traced frames in chunks (fan-out, CPU or GPU), encoded to MP4 (fan-in).

Scheduled on a new model, whose prediction surface textures the floor of the scene.
plan_chunks -> render_chunk x N -> encode_video -> Asset fanout_video
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from fanout.dagkit import (
    MODEL,
    OWNER,
    VIDEO,
    Tag,
    default_args,
    fail_fast,
    params,
    publish,
    refuse_unknown_conf,
    run_prefix,
    triggering_extra,
)
from fanout.keys import KEY_PATTERN
from fanout.pools import placement

DAG_ID = "fanout_render"


@dag(
    dag_id=DAG_ID,
    schedule=[MODEL],
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[Tag.FANOUT, Tag.RENDERING, Tag.PYTORCH, Tag.GPU],
    owner_links={OWNER: "https://github.com/fanout"},
    params=params(
        DAG_ID,
        n_frames=Param(72, type="integer", minimum=1, maximum=100_000, description="Frames in the video"),
        chunk_size=Param(8, type="integer", minimum=1, description="Frames per render task"),
        width=Param(384, type="integer", minimum=16, maximum=7680, multipleOf=2, description="Frame width"),
        height=Param(216, type="integer", minimum=16, maximum=4320, multipleOf=2, description="Frame height"),
        samples=Param(6, type="integer", minimum=1, maximum=1024, description="Samples per pixel"),
        fps=Param(24, type="integer", minimum=1, maximum=120, description="Video frame rate"),
        seed=Param(3, type="integer", minimum=0, description="Seed of the scene"),
        model=Param(
            "",
            type="string",
            pattern=KEY_PATTERN,
            description="Model whose prediction surface textures the floor; empty takes the triggering one",
        ),
    ),
    doc_md=__doc__,
)
def fanout_render():
    @task(**placement("bookkeeping"))
    def plan_chunks(params: dict | None = None) -> list[dict]:
        from fanout import render, train
        from fanout.keys import check_key
        from fanout.storage import ArtifactStore

        refuse_unknown_conf()
        with fail_fast():
            chunks = render.plan_chunks(params["n_frames"], params["chunk_size"])
            model = params["model"] or triggering_extra(MODEL, "model") or ""
            if model:  # checked once here: a bad model fails planning, not every chunk
                train.load_model(ArtifactStore(), check_key(model, "param 'model'"), device="cpu")
        return [{**chunk, "model": model} for chunk in chunks]

    @task(**placement("frames"), multiple_outputs=False, max_active_tis_per_dagrun=16)
    def render_chunk(chunk: dict, params: dict | None = None) -> dict:
        from fanout import render
        from fanout.storage import ArtifactStore

        store = ArtifactStore()
        unit = f"{run_prefix('render')}/chunks/chunk-{chunk['chunk']:04d}"
        with fail_fast():
            texture = None
            if chunk["model"]:
                from fanout import train

                texture = train.prediction_surface(store, chunk["model"])
            return render.render_chunk(
                store,
                unit,
                start=chunk["start"],
                stop=chunk["stop"],
                n_frames=params["n_frames"],
                width=params["width"],
                height=params["height"],
                samples=params["samples"],
                seed=params["seed"],
                texture=texture,
            )

    @task(**placement("encode"), multiple_outputs=False, outlets=[VIDEO])
    def encode_video(chunks: list[dict], params: dict | None = None) -> dict:
        from fanout import render
        from fanout.storage import ArtifactStore

        out = f"{run_prefix('render')}/video"
        with fail_fast():
            summary = render.encode_video(
                ArtifactStore(), [c["out_unit"] for c in chunks], out, fps=params["fps"]
            )
        publish(VIDEO, video=f"{out}/render.mp4")
        return summary

    encode_video(render_chunk.expand(chunk=plan_chunks()))


fanout_render()
