"""# Rendering: a ray-traced video of the model's predictions (the pipeline's last stage)

Asset **fanout_model** → `plan_chunks` → `render_chunk` x chunks → `encode_video` → Asset **fanout_video**

Scheduled by the `fanout_model` event of **fanout_train**: the scene's floor is textured with
the new model's predicted fare over distance x hour of day (or set the `model` param).

1. **plan_chunks** splits the `n_frames` frames into chunks of `chunk_size`.
2. **render_chunk**, one mapped task per chunk (named by its frame range in the grid),
   ray-traces its frames with torch tensor ops, on a GPU when the task has one.
3. **encode_video** checks that the chunks cover every frame, encodes them into an H.264 MP4
   and draws a contact sheet; it emits the `fanout_video` asset event.

Scheduled once per partition (the model event's partition key): outputs live under
`render/partitions/<key>/<run>/`; `render/partitions/<key>/current.json` and `render/latest.json`
name the partition's and the newest partition's video. A run without a partition key writes
under `render/<run>/`. The **Fanout report** tab of a
run plays the video and shows the contact sheet.
"""

from __future__ import annotations

from inspect import cleandoc

from airflow.sdk import Param, dag, task

from fanout.dagkit import (
    MODEL,
    VIDEO,
    Tag,
    default_args,
    fail_fast,
    follows,
    params,
    partition_output,
    publish,
    publish_partition,
    refuse_unknown_conf,
    run_prefix,
    triggering_extra,
)
from fanout.keys import KEY_PATTERN
from fanout.pools import placement

DAG_ID = "fanout_render"


@dag(
    dag_id=DAG_ID,
    schedule=follows(MODEL),  # one run per partition's model, with its partition key
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[Tag.FANOUT, Tag.RENDERING, Tag.PYTORCH, Tag.GPU],
    params=params(
        DAG_ID,
        n_frames=Param(72, type="integer", minimum=1, maximum=100_000, description="Frames in the video"),
        # 72 frames in 8 chunks: an even count, so on two slots no chunk renders alone at the end.
        chunk_size=Param(9, type="integer", minimum=1, description="Frames per render task"),
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
    @task(
        **placement("bookkeeping"),
        doc_md=cleandoc(
            """Split the video's frames into chunks, one `render_chunk` task each.

            - **Reads:** the params and the triggering `fanout_model` event (the model path).
            - **Writes:** nothing.
            - **Returns:** per chunk its frame range (start inclusive, stop exclusive) and the model.
            - **Size:** `bookkeeping`, on the CPU node pool.
            """
        ),
    )
    def plan_chunks(params: dict | None = None) -> list[dict]:
        from fanout import render, train
        from fanout.keys import check_key
        from fanout.storage import ArtifactStore

        refuse_unknown_conf()
        with fail_fast():
            chunks = render.plan_chunks(params["n_frames"], params["chunk_size"])
            model = (
                params["model"]
                or partition_output("train", "model")
                or triggering_extra(MODEL, "model")
                or ""
            )
            if model:  # checked once here: a bad model fails planning, not every chunk
                train.load_model(ArtifactStore(), check_key(model, "param 'model'"), device="cpu")
        return [{**chunk, "model": model} for chunk in chunks]

    @task(
        **placement("frames"),
        multiple_outputs=False,
        max_active_tis_per_dagrun=16,
        # The frames it renders, inclusive, e.g. "frames 8-15".
        map_index_template="frames {{ task.op_kwargs['chunk']['start'] }}-{{ task.op_kwargs['chunk']['stop'] - 1 }}",
        doc_md=cleandoc(
            """Ray-trace one chunk of frames.

            - **Reads:** the model (`model.pt`), whose prediction surface textures the floor.
            - **Writes:** `render/<run>/chunks/chunk-<n>/`: one PNG per frame and `_SUCCESS.json`.
            - **Size:** `frames`, on the GPU node pool (one GPU, gated by the `fanout_gpu` Airflow
              pool), or the CPU pool with `FANOUT_RENDER_POOL=cpu`; at most 16 run at once per DAG run.
            """
        ),
    )
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

    @task(
        **placement("encode"),
        multiple_outputs=False,
        outlets=[VIDEO],
        doc_md=cleandoc(
            """Fan-in: encode the frames into a video and draw a contact sheet.

            - **Reads:** every chunk's `_SUCCESS.json` and frames.
            - **Writes:** `render/<run>/video/`: `render.mp4` (H.264, `fps` frames per second),
              `contact_sheet.png` and `_SUCCESS.json`; emits the `fanout_video` asset event.
            - **Size:** `encode`, on the CPU node pool.
            """
        ),
    )
    def encode_video(chunks: list[dict], params: dict | None = None) -> dict:
        from fanout import render
        from fanout.storage import ArtifactStore

        out = f"{run_prefix('render')}/video"
        with fail_fast():
            summary = render.encode_video(
                ArtifactStore(), [c["out_unit"] for c in chunks], out, fps=params["fps"]
            )
        publish_partition("render", video=f"{out}/render.mp4", contact_sheet=f"{out}/contact_sheet.png")
        publish(VIDEO, video=f"{out}/render.mp4")
        return summary

    encode_video(render_chunk.expand(chunk=plan_chunks()))


fanout_render()
