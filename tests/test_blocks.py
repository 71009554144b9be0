"""The block registry (ops/blocks.py): blocks register in their own files, one name per builder.

That a new file of ops/ registers itself without an edit elsewhere, and that main.py and
test_models.py then find it, is proven on a copy of the repository by tests/test_add_module.py.
"""

import pytest

from ops import blocks, channel_gate, nl, non_local, rnl


def test_the_published_blocks_register_in_their_own_files():
    assert blocks.BLOCKS["rnl"] is rnl.attach
    assert blocks.BLOCKS["nl"] is nl.attach
    assert blocks.BLOCKS["gc"] is channel_gate.attach
    assert non_local.BLOCKS is blocks.BLOCKS  # the name existing callers import
    # the files of ops/ that register a block are exactly the three that define one
    assert blocks.block_files() == ["ops.channel_gate", "ops.nl", "ops.rnl"]


@pytest.fixture
def scratch_name():
    name = "test_probe_block"
    yield name
    blocks.BLOCKS.pop(name, None)


def test_a_registered_builder_is_found_by_name(scratch_name):
    @blocks.register_block(scratch_name)
    def attach(channels, stage, first, **_):
        return {}

    assert blocks.builder(scratch_name) is attach
    assert scratch_name in blocks.available()


def test_two_builders_under_one_name_are_refused_naming_both(scratch_name):
    def first(channels, stage, first, **_):
        return {}

    def second(channels, stage, first, **_):
        return {}

    blocks.register_block(scratch_name)(first)
    blocks.register_block(scratch_name)(first)  # the same function again (a re-import): fine
    with pytest.raises(ValueError, match=r"registered twice, by .*\.first and .*\.second"):
        blocks.register_block(scratch_name)(second)
    assert blocks.BLOCKS[scratch_name] is first
    with pytest.raises(ValueError, match="registered twice"):
        blocks.register_block("rnl")(second)  # a published name is taken too
    assert blocks.BLOCKS["rnl"] is rnl.attach


@pytest.mark.parametrize("name", ["", "two words", "a-b", 3])
def test_a_name_that_cannot_be_a_flag_value_is_refused(name):
    with pytest.raises(ValueError, match="a block type is a name"):
        blocks.register_block(name)


def test_an_unknown_type_lists_the_registered_ones_and_says_how_to_add_one():
    with pytest.raises(ValueError) as exc:
        blocks.builder("nope")
    message = str(exc.value)
    assert message.startswith("unknown non-local block type 'nope': choose one of ['gc', 'nl'")
    assert "@register_block" in message and "\n" not in message
