"""A compositional scene set (SYNTHETIC, labelled so wherever it appears): coloured shapes with exact captions in
GenEval's six categories, editing instructions with exact targets, and questions with exact answers.

Shared by the UniPic (generation, editing, understanding) and NEO (native-resolution VQA) families; the judge that
scores generated images by plain image analysis is :mod:`tasks.metrics.scene_judge`; the dataset writer is
:func:`datamodules.synthetic.scenes.write_scene_dataset`. See ``docs/scenes.md``.
"""
from .edits import ADD_ANCHORS, EDIT_KINDS, MOVE_SHIFT, MOVES, refer, sample_edit
from .prompts import (
    CATEGORIES,
    COUNTS,
    POSITION_MARGIN,
    RELATIONS,
    PromptSpec,
    caption,
    parse_prompt,
    prompt_split,
    prompts,
    relations,
    sample_scene,
    scene_for_prompt,
)
from .qa import QA, QA_KINDS, questions
from .scene import BACKGROUND, COLORS, SHAPES, Scene, SceneObject, render_scene

__all__ = [
    "ADD_ANCHORS", "BACKGROUND", "CATEGORIES", "COLORS", "COUNTS", "EDIT_KINDS", "MOVES", "MOVE_SHIFT",
    "POSITION_MARGIN", "QA", "QA_KINDS", "RELATIONS", "SHAPES", "PromptSpec", "Scene", "SceneObject", "caption",
    "parse_prompt", "prompt_split", "prompts", "questions", "refer", "relations", "render_scene", "sample_edit",
    "sample_scene", "scene_for_prompt",
]
