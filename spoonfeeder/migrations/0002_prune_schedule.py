from django.db import migrations


def add_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    # Schedule.name is not unique in django-q2: update_or_create keeps exactly one.
    Schedule.objects.update_or_create(
        name="Prune old events and task results",
        defaults={"func": "spoonfeeder.tasks.prune", "schedule_type": "H", "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(func="spoonfeeder.tasks.prune").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("spoonfeeder", "0001_initial"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(add_schedule, remove_schedule)]
