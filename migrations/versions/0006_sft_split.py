"""prompts.split: a third value, 'sft' (utterances only the base model's SFT learns from; corpus.sft_fraction)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def set_comment(comment: str, existing: str) -> None:
    # SQLite keeps no column comments (and would have to rebuild the referenced table to try): nothing to change there
    if op.get_bind().dialect.name != 'sqlite':
        op.alter_column('prompts', 'split', existing_type=sa.String(length=16), existing_nullable=False,
                        comment=comment, existing_comment=existing)


def upgrade() -> None:
    set_comment('train | sft | heldout', 'train | heldout')


def downgrade() -> None:
    set_comment('train | heldout', 'train | sft | heldout')
