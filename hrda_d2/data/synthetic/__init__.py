"""Small generated replicas of GTA, Synthia, Cityscapes, ACDC, Dark Zurich and WildDash 2 in their real layouts.

They let the whole pipeline (preparation, registration, loading, training, evaluation) run without the real
data. ``generate_synthetic_datasets(root, ...)`` (``datasets/prepare_synthetic.py``) writes::

    root/gta/images/00001.png                       RGB
    root/gta/labels/00001.png                       palettised ('P'), Cityscapes label ids, Cityscapes colours
    root/synthia/RGB/0000000.png                    RGB
    root/synthia/GT/LABELS/0000000.png              16-bit, 3 channels: R = Synthia class id, G = instance,
                                                    B = 1000 (so reading the wrong channel is noticed)
    root/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png
    root/cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_polygons.json
                                                    + _gtFine_labelIds.png (cityscapesscripts json2labelImg)
                                                    + _gtFine_instanceIds.png (cityscapesscripts, 16-bit)
    root/acdc/rgb_anon/{train,val}/GOPR0475_frame_<i>_rgb_anon.png           (acdc=True)
    root/acdc/gt/{train,val}/GOPR0475_frame_<i>_gt_labelTrainIds.png
    root/dark_zurich/rgb_anon/train/night/GOPR0355/GOPR0355_frame_<i>_rgb_anon.png     (dark_zurich=True)
    root/dark_zurich/{rgb_anon,gt}/val/night/GOPR0356/GOPR0356_frame_<i>_{rgb_anon,gt_labelTrainIds}.png
    root/wilddash2/images/<stem>.jpg, root/wilddash2/labels/<stem>.png     (wilddash2=True; wd_public_02.zip
                                                    unpacked: 8-bit WildDash 2 label ids 0..38; val stems from
                                                    VFM-UDA's validation list, train stems zz<i>_100000)

Train-id labels of GTA/Synthia/Cityscapes are NOT written: ``datasets/prepare_*.py`` make them, as for the real
data (ACDC/Dark Zurich ship train-id labels, so they are written directly; WildDash 2's raw ids need
``datasets/prepare_wilddash2.py``, which also makes the train / val split).

Scenes. Every image is a street scene drawn as Cityscapes polygons (the label image of every domain is the
rasterisation of the polygons by cityscapesscripts' ``createLabelImage``, the image is painted from that label
map, so image and label always agree): sky on top, buildings and vegetation along a random horizon, sidewalk
and a perspective road (vanishing point) below, and objects scaled with their distance to the horizon: cars,
persons, poles with traffic signs (always), and walls, fences, traffic lights, terrain, riders, trucks, buses,
trains, motorcycles, bicycles (each image gets 3 of these 10 rare classes in turn, plus each other with
probability 0.25, so any 4 consecutive images hold all 19 classes unless a nearer object hides one). Poles,
signs and persons stay small and thin, which gives rare class sampling something to do. Void labels
(unlabeled, ego vehicle, static, dynamic, ground, parking, rail track, guard rail, bridge, polegroup, caravan,
trailer) and crowd polygons ('persongroup') appear too, so the preparation's 255-mapping is exercised;
Cityscapes cars carry a license plate polygon (id -1, not drawn by cityscapesscripts). Synthia-like scenes
leave out terrain, truck and train (not present in Synthia), and add lane markings on the road (Synthia
id 22) and road-work (id 14) where Cityscapes has 'static'.

Domain shift. The class layout statistics are the same in every domain; the APPEARANCE differs:

* source (GTA-like, Synthia-like): each class is painted with its Cityscapes colour, slightly washed out
  (GTA) or warmed (Synthia), a smooth low-frequency texture, a top-to-bottom lighting ramp and weak noise.
* target (Cityscapes-like): every class colour is a consistent transform of the source colour - a rotation
  of the hue by 30 degrees about the grey axis with 0.85 contrast and a blue/green shift - painted with a
  fine high-frequency texture, a left-to-right lighting falloff and stronger noise.
* ACDC-like: the target appearance plus fog (blend towards light grey); Dark Zurich-like: the target
  appearance at night (dark, noisier); WildDash 2-like: the target appearance, slightly hazy and dim, with lane
  markings (road-marking) and some cars / signs / poles relabelled as the extra WildDash 2 classes.

So a model trained on the source sees familiar shapes with unfamiliar colours/textures on the target and does
noticeably worse there, while the consistent colour transform leaves self-training something to adapt to.
Everything is deterministic under ``seed`` (one NumPy generator per image, from ``(seed, domain, split, i)``).

Modules (polygon points are pixels ``(x, y)``, ``x`` to the right, ``y`` downwards from the top-left corner):

* :mod:`.geometry`: polygon types and helpers (rectangles, jittered ellipses, clipping to the image).
* :mod:`.layout`: :class:`~.layout.StreetLayout`, horizon / ground line / road perspective and the random
  placement of objects on and beside the road.
* :mod:`.background` (sky, buildings, vegetation, ground, road, void stuff), :mod:`.things` (vehicles,
  persons, two-wheelers, poles with signs and lights), :mod:`.void_objects` (void and crowd objects, ego
  vehicle): the builders; :mod:`.scene`: ``make_scene`` composing them.
* :mod:`.labels`: polygons -> Cityscapes annotations and label-id maps, Synthia lane markings, label encodings.
* :mod:`.appearance`: ``DomainStyle``, ``domain_style`` and ``render_image`` (the domain shift).
* :mod:`.writers`: one writer per dataset layout; :mod:`.generate`: ``generate_synthetic_datasets``.
"""
from .appearance import DomainStyle, domain_style, render_image
from .generate import SyntheticDatasets, generate_synthetic_datasets
from .labels import label_id_map
from .scene import RARE_CLASSES, SYNTHIA_EXCLUDED, make_scene

__all__ = [
    "SyntheticDatasets", "generate_synthetic_datasets", "make_scene", "render_image", "domain_style",
    "DomainStyle", "label_id_map", "RARE_CLASSES", "SYNTHIA_EXCLUDED",
]
