"""ceiling scores: the held-out recordings and their decoded golden tokens, scored once per work directory

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ceiling_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='recording | golden_tokens'),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('scoring', sa.String(length=64), nullable=False,
              comment='sha256 of the metric plug-ins, options and decoding'),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True, comment='why the metric failed on this item'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('prompt_id', 'kind', 'metric', 'scoring')
    )
    with op.batch_alter_table('ceiling_scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ceiling_scores_prompt_id'), ['prompt_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ceiling_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ceiling_scores_prompt_id'))
    op.drop_table('ceiling_scores')
