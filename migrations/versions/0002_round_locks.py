"""round locks: at most one running round per campaign

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:53:44.200287
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('round_locks',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False, comment='random token of the holding run'),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ),
    sa.PrimaryKeyConstraint('campaign_id')
    )


def downgrade() -> None:
    op.drop_table('round_locks')
