-- The fewest bytes per task the scale benchmark's content can take in PostgreSQL (issue 21, item 3).
-- Run by hand on a database filled by `python bench/scale.py --tasks 2e5 --database NAME --fill-only`:
--     psql -d NAME -f bench/bytes_floor.sql
-- It copies astra's rows into a schema `floor` laid out with every saving that keeps the content, prints bytes
-- per task of each table and index, then drops the schema. Nothing in the astra schema is changed.

set client_min_messages = warning;
drop schema if exists floor cascade;
create schema floor;

-- The task row keeps every column. Fixed-width columns first (no alignment padding), a done task's heartbeat and
-- claim token cleared, and the seed's junction table folded into an array column (a view could keep its name).
create table floor.task as
select t.pk, t.created, t.started, case when t.status = 'done' then null else t.heartbeat end as heartbeat,
       t.completed, t.duration, t.lease, t.pid, t.attempts, t.dynamic_dependencies,
       t.task_hash, t.task_module, t.task_name, t.task_id, t.version, t.status, t.host,
       case when t.status = 'done' then null else t.claim_token end as claim_token,
       t.astra_version, t.result, t.error, t.traceback, t.slurm_job_id, t.slurm_node,
       (select array_agg(l.parameter_pk order by l.parameter_pk) from astra.task_parameter as l
        where l.task_pk = t.pk) as parameter_pks
from astra.task as t order by t.pk;
alter table floor.task add primary key (pk);
-- A 64-bit prefix of the hash is the key; the full hash stays in the row to check a match against.
create index task_hash_prefix on floor.task ((substring(task_hash from 1 for 8))) include (status);
create index task_task_id on floor.task using hash (task_id);
create index task_name_status on floor.task (task_name, status);
create index task_parameter_pks on floor.task using gin (parameter_pks);
create index task_json_result on floor.task ((task_module || '.' || task_name))
    where result is not null and status = 'done';

create table floor.parameter as select * from astra.parameter order by pk;
alter table floor.parameter add primary key (pk);
create index parameter_hash_prefix on floor.parameter ((substring(parameter_hash from 1 for 8)));
create index parameter_name on floor.parameter (parameter_name);

create table floor.dependency as select * from astra.dependency order by task_pk, requires_pk;
alter table floor.dependency add primary key (task_pk, requires_pk);
create index dependency_requires_pk on floor.dependency (requires_pk);

-- The output rows keyed by their task: no pk of their own, one index fewer.
create table floor.scale_fit as
select task_pk, teff, logg, fe_h, v_rad, chi2, model_flux from astra.scale_fit order by task_pk;
alter table floor.scale_fit add primary key (task_pk);

-- Beyond "the same content": no task_id, and module and name as a 2-byte family number.
create table floor.task_without_names as
select pk, created, started, heartbeat, completed, duration, lease, pid, attempts, dynamic_dependencies,
       dense_rank() over (order by task_module, task_name)::smallint as family, task_hash, version, status, host,
       claim_token, astra_version, result, error, traceback, slurm_job_id, slurm_node, parameter_pks
from floor.task order by pk;

vacuum analyze floor.task, floor.parameter, floor.dependency, floor.scale_fit, floor.task_without_names;

select c.relname as relation, round(pg_relation_size(c.oid)::numeric / (select count(*) from astra.task))
    as bytes_per_task
from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = 'floor' and c.relkind in ('r', 'i')
order by 2 desc;

select round(sum(pg_relation_size(c.oid)) filter (where c.relname <> 'task_without_names')
             / (select count(*) from astra.task)) as same_content,
       round(sum(pg_relation_size(c.oid)) filter (where c.relname not in ('task', 'task_task_id'))
             / (select count(*) from astra.task)) as without_task_id_and_names
from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = 'floor' and c.relkind in ('r', 'i');

drop schema floor cascade;
