-- The student directory (the students model's tables): universities, courses, students, and
-- enrollments. Constraints are real so that bad data is refused where it is written.
CREATE TABLE IF NOT EXISTS universities (
    id   bigserial PRIMARY KEY,
    name text NOT NULL CONSTRAINT universities_name_length CHECK (char_length(name) BETWEEN 1 AND 50),
    CONSTRAINT universities_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS courses (
    id   bigserial PRIMARY KEY,
    name text NOT NULL CONSTRAINT courses_name_length CHECK (char_length(name) BETWEEN 1 AND 50),
    CONSTRAINT courses_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS students (
    id             bigserial PRIMARY KEY,
    first_name     text NOT NULL CONSTRAINT students_first_name_length CHECK (char_length(first_name) BETWEEN 1 AND 50),
    last_name      text NOT NULL CONSTRAINT students_last_name_length CHECK (char_length(last_name) BETWEEN 1 AND 50),
    age            integer NOT NULL CONSTRAINT students_age_range CHECK (age BETWEEN 1 AND 100),
    year_in_school char(2) NOT NULL CONSTRAINT students_year_in_school_valid CHECK (year_in_school IN ('FR', 'SO', 'JR', 'SR')),
    university_id  bigint REFERENCES universities (id) ON DELETE SET NULL
);
-- Fan-out walks a university's students in id order, in chunks.
CREATE INDEX IF NOT EXISTS students_university_id_id ON students (university_id, id);

CREATE TABLE IF NOT EXISTS student_courses (
    student_id bigint NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    course_id  bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    PRIMARY KEY (student_id, course_id)
);
-- Fan-out walks a course's students in id order, in chunks.
CREATE INDEX IF NOT EXISTS student_courses_course_id_student_id ON student_courses (course_id, student_id);
