-- Judgment analysis: views and table macros over `judgments`, created in every catalog.
-- Idempotent; `judgments` starts as an empty view and is re-pointed at the current published
-- judgments dataset whenever one is published (tasks.judge.analysis.sync_judgments_view).
-- Labels are clamped to the 0..3 scale everywhere; a judgment without a grade (parse_error,
-- refused, error) is never a label. `ref` names the reference judge (e.g. the human qrels).

CREATE VIEW IF NOT EXISTS judgments AS
SELECT NULL::VARCHAR AS query_id, NULL::VARCHAR AS doc_id, NULL::VARCHAR AS judge,
       NULL::TINYINT AS grade, NULL::FLOAT[4] AS p_grade, NULL::FLOAT AS expected_grade,
       NULL::VARCHAR AS status, NULL::VARCHAR AS raw
WHERE false;

-- Graded labels only, clamped to [0, 3].
CREATE OR REPLACE VIEW judgment_labels AS
SELECT query_id, doc_id, judge, greatest(least(grade, 3), 0)::INTEGER AS grade
FROM judgments WHERE status = 'ok' AND grade IS NOT NULL;

-- How many judgments each judge gave per grade (grade NULL = no label, see status).
CREATE OR REPLACE VIEW judgment_label_distribution AS
WITH c AS (
    SELECT judge, CASE WHEN status = 'ok' THEN greatest(least(grade, 3), 0)::INTEGER END AS grade,
           status, count(*) AS n
    FROM judgments GROUP BY 1, 2, 3)
SELECT judge, grade, status, n, n / sum(n) OVER (PARTITION BY judge) AS share
FROM c ORDER BY judge, grade NULLS LAST, status;

-- The (reference, judge) label pairs: a pair counts when both gave a grade to it.
CREATE OR REPLACE MACRO judgment_pairs(ref) AS TABLE
SELECT j.judge, j.query_id, j.doc_id, r.grade AS ref_grade, j.grade AS grade
FROM judgment_labels j
JOIN judgment_labels r ON r.judge = ref AND j.query_id = r.query_id AND j.doc_id = r.doc_id
WHERE j.judge <> ref;

-- Full 4x4 confusion matrix per judge (rows: reference grade, columns: judge grade).
CREATE OR REPLACE MACRO judgment_confusion(ref) AS TABLE
WITH counts AS (SELECT judge, ref_grade, grade, count(*) AS n FROM judgment_pairs(ref) GROUP BY ALL)
SELECT j.judge, a.g::INTEGER AS ref_grade, b.g::INTEGER AS grade, coalesce(c.n, 0) AS n
FROM (SELECT DISTINCT judge FROM counts) j
CROSS JOIN range(4) a(g) CROSS JOIN range(4) b(g)
LEFT JOIN counts c ON c.judge = j.judge AND c.ref_grade = a.g AND c.grade = b.g
ORDER BY ALL;

-- Leniency: the judge's mean grade minus the reference's, on the pairs both labelled.
CREATE OR REPLACE MACRO judgment_leniency(ref) AS TABLE
SELECT judge, count(*) AS n_pairs, avg(grade) AS mean_grade, avg(ref_grade) AS ref_mean_grade,
       avg(grade) - avg(ref_grade) AS leniency
FROM judgment_pairs(ref) GROUP BY ALL ORDER BY judge;

-- The agreement table, one row per judge against the reference, all from one confusion matrix:
-- * Cohen's kappa (unweighted) on 4 classes and binarized at 0|123 (cut 1), 01|23 (cut 2) and
--   012|3 (cut 3); NULL when chance agreement is 1;
-- * Krippendorff's alpha, ordinal, two coders, from the coincidence matrix o_ck = n(c,k) + n(k,c)
--   with margins n_c: delta2(c,k) = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2 and
--   alpha = 1 - (N - 1) * sum o_ck delta2 / sum n_c n_k delta2;
-- * leniency = mean judge grade - mean reference grade; n_pairs.
CREATE OR REPLACE MACRO judgment_agreement(ref) AS TABLE
WITH cm AS MATERIALIZED (SELECT * FROM judgment_confusion(ref)),
schemes(scheme, cut) AS (VALUES ('kappa', 0), ('kappa_0_123', 1), ('kappa_01_23', 2), ('kappa_012_3', 3)),
lab AS (
    SELECT judge, scheme,
           CASE WHEN cut = 0 THEN ref_grade ELSE (ref_grade >= cut)::INTEGER END AS a,
           CASE WHEN cut = 0 THEN grade ELSE (grade >= cut)::INTEGER END AS b, n
    FROM cm CROSS JOIN schemes),
tot AS (SELECT judge, scheme, sum(n)::DOUBLE AS n, coalesce(sum(n) FILTER (WHERE a = b), 0)::DOUBLE AS agree
        FROM lab GROUP BY ALL),
ma AS (SELECT judge, scheme, a AS c, sum(n) AS na FROM lab GROUP BY ALL),
mb AS (SELECT judge, scheme, b AS c, sum(n) AS nb FROM lab GROUP BY ALL),
pe AS (SELECT judge, scheme, sum(na * nb)::DOUBLE AS ee FROM ma JOIN mb USING (judge, scheme, c) GROUP BY ALL),
kap AS (SELECT t.judge, t.scheme,
               CASE WHEN t.n * t.n = coalesce(pe.ee, 0) THEN NULL
                    ELSE (t.agree * t.n - coalesce(pe.ee, 0)) / (t.n * t.n - coalesce(pe.ee, 0)) END AS kappa
        FROM tot t LEFT JOIN pe USING (judge, scheme)),
k AS (SELECT judge,
             max(kappa) FILTER (WHERE scheme = 'kappa') AS kappa,
             max(kappa) FILTER (WHERE scheme = 'kappa_0_123') AS kappa_0_123,
             max(kappa) FILTER (WHERE scheme = 'kappa_01_23') AS kappa_01_23,
             max(kappa) FILTER (WHERE scheme = 'kappa_012_3') AS kappa_012_3
      FROM kap GROUP BY judge),
o AS (SELECT x.judge, x.ref_grade AS c, x.grade AS k, (x.n + y.n)::DOUBLE AS o
      FROM cm x JOIN cm y ON x.judge = y.judge AND x.ref_grade = y.grade AND x.grade = y.ref_grade),
nc AS (SELECT judge, c, sum(o) AS n_c FROM o GROUP BY ALL),
cu AS (SELECT judge, c, n_c, sum(n_c) OVER (PARTITION BY judge ORDER BY c) AS cum FROM nc),
d AS (SELECT x.judge, x.c, y.c AS k, x.n_c * y.n_c AS nn,
             power(CASE WHEN x.c <= y.c THEN y.cum - x.cum + x.n_c ELSE x.cum - y.cum + y.n_c END
                   - (x.n_c + y.n_c) / 2.0, 2) AS d2
      FROM cu x JOIN cu y USING (judge)),
s AS (SELECT d.judge, sum(o.o * d.d2) AS observed, sum(d.nn * d.d2) AS expected
      FROM d JOIN o ON o.judge = d.judge AND o.c = d.c AND o.k = d.k GROUP BY ALL),
al AS (SELECT s.judge, CASE WHEN s.expected = 0 THEN NULL
                            ELSE 1 - (n.total - 1) * s.observed / s.expected END AS alpha
       FROM s JOIN (SELECT judge, sum(n_c) AS total FROM nc GROUP BY ALL) n USING (judge)),
l AS (SELECT judge, sum(n)::BIGINT AS n_pairs,
             (sum(grade * n) - sum(ref_grade * n))::DOUBLE / sum(n) AS leniency
      FROM cm GROUP BY judge)
SELECT k.judge, k.kappa, al.alpha, k.kappa_0_123, k.kappa_01_23, k.kappa_012_3, l.leniency, l.n_pairs
FROM k JOIN al USING (judge) JOIN l USING (judge)
ORDER BY k.judge;

-- The same numbers one at a time.
CREATE OR REPLACE MACRO judgment_kappa(ref) AS TABLE
SELECT judge, scheme, n_pairs, kappa FROM (
    SELECT judge, n_pairs, kappa, kappa_0_123, kappa_01_23, kappa_012_3 FROM judgment_agreement(ref))
UNPIVOT INCLUDE NULLS (kappa FOR scheme IN (kappa, kappa_0_123, kappa_01_23, kappa_012_3))
ORDER BY judge, scheme;

CREATE OR REPLACE MACRO judgment_alpha(ref) AS TABLE
SELECT judge, n_pairs, alpha FROM judgment_agreement(ref);

-- Agreement per query: exact agreement, mean absolute error, leniency and kappa (4 classes).
CREATE OR REPLACE MACRO judgment_query_agreement(ref) AS TABLE
WITH p AS (SELECT * FROM judgment_pairs(ref)),
t AS (SELECT judge, query_id, count(*) AS n, count(*) FILTER (WHERE grade = ref_grade) AS agree,
             avg(abs(grade - ref_grade)) AS mae, avg(grade) - avg(ref_grade) AS leniency
      FROM p GROUP BY ALL),
ma AS (SELECT judge, query_id, ref_grade AS c, count(*) AS na FROM p GROUP BY ALL),
mb AS (SELECT judge, query_id, grade AS c, count(*) AS nb FROM p GROUP BY ALL),
pe AS (SELECT judge, query_id, sum(na * nb)::DOUBLE AS ee FROM ma JOIN mb USING (judge, query_id, c) GROUP BY ALL)
SELECT t.judge, t.query_id, t.n AS n_pairs, t.agree / t.n AS exact_agreement, t.mae, t.leniency,
       CASE WHEN t.n * t.n = coalesce(pe.ee, 0) THEN NULL
            ELSE (t.agree * t.n - coalesce(pe.ee, 0)) / (t.n::DOUBLE * t.n - coalesce(pe.ee, 0)) END AS kappa
FROM t LEFT JOIN pe USING (judge, query_id)
ORDER BY t.judge, t.query_id;

-- Ensembles over the listed judges (NULL = all): the mean of p_grade and a majority vote.
-- A tied vote takes the lowest of the tied grades (conservative) and sets `tied`.
CREATE OR REPLACE MACRO judgment_ensemble_of(judges) AS TABLE
WITH ok AS (SELECT query_id, doc_id, judge, greatest(least(grade, 3), 0)::INTEGER AS grade, p_grade
            FROM judgments
            WHERE status = 'ok' AND grade IS NOT NULL AND (judges IS NULL OR list_contains(judges, judge))),
mp AS (SELECT query_id, doc_id, count(*) AS n_judges,
              [avg(p_grade[1]), avg(p_grade[2]), avg(p_grade[3]), avg(p_grade[4])] AS p_mean
       FROM ok GROUP BY ALL),
v AS (SELECT query_id, doc_id, grade, count(*) AS votes FROM ok GROUP BY ALL),
w AS (SELECT *, max(votes) OVER (PARTITION BY query_id, doc_id) AS top FROM v),
maj AS (SELECT query_id, doc_id, min(grade) AS majority_grade, max(votes) AS majority_votes,
               count(*) > 1 AS tied
        FROM w WHERE votes = top GROUP BY ALL)
SELECT mp.query_id, mp.doc_id, mp.n_judges, mp.p_mean,
       (list_position(mp.p_mean, list_max(mp.p_mean)) - 1)::INTEGER AS mean_p_grade,
       mp.p_mean[2] + 2 * mp.p_mean[3] + 3 * mp.p_mean[4] AS expected_grade,
       maj.majority_grade, maj.majority_votes, maj.tied
FROM mp JOIN maj USING (query_id, doc_id)
ORDER BY mp.query_id, mp.doc_id;

CREATE OR REPLACE VIEW judgment_ensemble AS SELECT * FROM judgment_ensemble_of(NULL);

-- The disagreement queue: pairs where the listed judges (NULL = all) gave different grades,
-- the widest splits first.
CREATE OR REPLACE MACRO judgment_disagreements_of(judges) AS TABLE
SELECT query_id, doc_id, count(*) AS n_judges, min(grade) AS min_grade, max(grade) AS max_grade,
       max(grade) - min(grade) AS spread, stddev_pop(grade) AS stddev,
       list({'judge': judge, 'grade': grade} ORDER BY judge) AS grades
FROM judgment_labels
WHERE judges IS NULL OR list_contains(judges, judge)
GROUP BY ALL
HAVING count(*) >= 2 AND min(grade) <> max(grade)
ORDER BY spread DESC, stddev DESC, query_id, doc_id;

CREATE OR REPLACE VIEW judgment_disagreements AS SELECT * FROM judgment_disagreements_of(NULL);

-- Statuses per judge: how many judgments were labels, parse errors, refusals, errors.
CREATE OR REPLACE VIEW judgment_status AS
SELECT judge, status, count(*) AS n FROM judgments GROUP BY ALL ORDER BY judge, status;
