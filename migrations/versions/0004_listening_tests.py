"""listening tests: raters, listening items (A/B pairs of clips) and their judgments

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('raters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False, comment="sha256 hex of the rater's token"),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('listening_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False, comment='the round of the subject sample'),
    sa.Column('comparison', sa.String(length=32), nullable=False,
              comment='round_vs_previous | aligned_vs_base | golden_vs_synthetic | criterion'),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('subject_sample_id', sa.Integer(), nullable=False),
    sa.Column('reference_sample_id', sa.Integer(), nullable=False),
    sa.Column('subject_on', sa.String(length=1), nullable=False,
              comment='A | B: the side the subject sample is played on'),
    sa.Column('pair_id', sa.Integer(), nullable=True, comment='the automatic pair it is, if any'),
    sa.Column('position', sa.Integer(), nullable=False,
              comment='raters hear items in this (seeded, shuffled) order'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ),
    sa.ForeignKeyConstraint(['pair_id'], ['pairs.id'], ),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], ),
    sa.ForeignKeyConstraint(['reference_sample_id'], ['samples.id'], ),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.ForeignKeyConstraint(['subject_sample_id'], ['samples.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subject_sample_id', 'reference_sample_id')
    )
    with op.batch_alter_table('listening_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_listening_items_campaign_id'), ['campaign_id'], unique=False)

    op.create_table('judgments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('choice', sa.String(length=8), nullable=False, comment='A | B | tie, as the rater answered'),
    sa.Column('winner_sample_id', sa.Integer(), nullable=True, comment='NULL on a tie'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['listening_items.id'], ),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], ),
    sa.ForeignKeyConstraint(['winner_sample_id'], ['samples.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'rater_id')
    )
    with op.batch_alter_table('judgments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_judgments_item_id'), ['item_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_judgments_rater_id'), ['rater_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('judgments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_judgments_rater_id'))
        batch_op.drop_index(batch_op.f('ix_judgments_item_id'))
    op.drop_table('judgments')
    with op.batch_alter_table('listening_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_listening_items_campaign_id'))
    op.drop_table('listening_items')
    op.drop_table('raters')
