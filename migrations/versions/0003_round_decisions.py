"""round decisions: what the collapse guard and the promotion gate decided about each round

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:12:00.000000
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('round_decisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='guard | promotion'),
    sa.Column('verdict', sa.String(length=32), nullable=False,
              comment='guard: ok | flagged; promotion: promoted | refused | off'),
    sa.Column('reasons', JSON, nullable=False, comment='one sentence per reason; empty when nothing was wrong'),
    sa.Column('details', JSON, nullable=True, comment='the figures the decision was made on'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('round_id', 'kind')
    )
    with op.batch_alter_table('round_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_round_decisions_round_id'), ['round_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('round_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_round_decisions_round_id'))
    op.drop_table('round_decisions')
